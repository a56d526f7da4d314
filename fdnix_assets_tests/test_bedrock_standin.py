"""The Bedrock stand-in behaves like Bedrock for real boto3 clients over HTTP and moto S3."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from fdnix_assets_tests.bedrock_standin import (
    TERMINAL_STATUSES,
    TITAN_V2_MODEL_ID,
    BedrockStandIn,
    titan_embedding,
    titan_token_count,
)
from fdnix_assets_tests.conftest import REPO_ROOT

ROLE_ARN = "arn:aws:iam::123456789012:role/fdnix-bedrock-batch"
REGION = "us-east-1"
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def standin(bedrock_standin: BedrockStandIn) -> BedrockStandIn:
    return bedrock_standin


@pytest.fixture
def s3(aws_env: str) -> BaseClient:
    return boto3.client("s3", endpoint_url=aws_env, region_name=REGION)


@pytest.fixture
def bedrock(standin: BedrockStandIn) -> BaseClient:
    # No endpoint_url: the client must find the stand-in through AWS_ENDPOINT_URL_BEDROCK.
    return boto3.client("bedrock", region_name=REGION)


@pytest.fixture
def runtime(standin: BedrockStandIn) -> BaseClient:
    return boto3.client("bedrock-runtime", region_name=REGION, config=NO_RETRIES)


def make_records(count: int, *, start: int = 0, dimensions: int = 256) -> list[dict[str, Any]]:
    return [
        {
            "recordId": f"R{index:06d}",
            "modelInput": {
                "inputText": f"package{index}: tool number {index} for testing, version {index}",
                "dimensions": dimensions,
                "normalize": True,
            },
        }
        for index in range(start, start + count)
    ]


def put_jsonl(s3: BaseClient, bucket: str, key: str, records: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(record) + "\n" for record in records)
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
    return f"s3://{bucket}/{key}"


def job_request(name: str, input_uri: str, output_uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "jobName": name,
        "roleArn": ROLE_ARN,
        "modelId": TITAN_V2_MODEL_ID,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": output_uri}},
        **extra,
    }


def wait_for_end(bedrock: BaseClient, arn: str, limit_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
        if job["status"] in TERMINAL_STATUSES:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {arn} still {job['status']} after {limit_s} s")
        time.sleep(0.02)


def wait_for_status(bedrock: BaseClient, arn: str, status: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while (seen := bedrock.get_model_invocation_job(jobIdentifier=arn)["status"]) != status:
        assert seen not in TERMINAL_STATUSES, f"job {arn} ended {seen} before reaching {status}"
        assert time.monotonic() < deadline, f"job {arn} still {seen}, never reached {status}"
        time.sleep(0.02)


def read_jsonl(s3: BaseClient, bucket: str, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def read_json(s3: BaseClient, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys_under(s3: BaseClient, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def run_job(
    bedrock: BaseClient, s3: BaseClient, bucket: str, name: str, records: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    input_uri = put_jsonl(s3, bucket, f"input/{name}/batch-000.jsonl", records)
    arn = bedrock.create_model_invocation_job(
        **job_request(name, input_uri, f"s3://{bucket}/output/")
    )["jobArn"]
    return arn, wait_for_end(bedrock, arn)


def error_code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return error.value.response["Error"]["Code"]


def test_a_job_over_150_records_completes_with_shuffled_outputs_and_a_manifest(
    standin: BedrockStandIn,
    bedrock: BaseClient,
    runtime: BaseClient,
    s3: BaseClient,
    s3_bucket: str,
) -> None:
    records = make_records(150)
    arn, job = run_job(bedrock, s3, s3_bucket, "embed-150", records)

    assert arn.startswith(f"arn:aws:bedrock:{REGION}:")
    assert job["status"] == "Completed"
    assert standin.jobs[arn].history == [
        "Submitted",
        "Validating",
        "Scheduled",
        "InProgress",
        "Completed",
    ]
    assert (job["totalRecordCount"], job["successRecordCount"], job["errorRecordCount"]) == (
        150,
        150,
        0,
    )
    prefix = f"output/{job_id(arn)}/"
    assert keys_under(s3, s3_bucket, prefix) == [
        f"{prefix}batch-000.jsonl.out",
        f"{prefix}manifest.json.out",
    ]
    lines = read_jsonl(s3, s3_bucket, f"{prefix}batch-000.jsonl.out")
    output_ids = [line["recordId"] for line in lines]
    input_ids = [record["recordId"] for record in records]
    assert sorted(output_ids) == input_ids
    assert output_ids != input_ids, "Bedrock does not keep the input order"
    by_id = {record["recordId"]: record for record in records}
    tokens = 0
    for line in lines:
        text = by_id[line["recordId"]]["modelInput"]["inputText"]
        assert line["modelInput"] == by_id[line["recordId"]]["modelInput"]
        embedding = line["modelOutput"]["embedding"]
        assert len(embedding) == 256
        assert math.isclose(math.fsum(value * value for value in embedding), 1.0, abs_tol=1e-5)
        assert embedding == titan_embedding(text, 256, True)
        assert line["modelOutput"]["inputTextTokenCount"] == titan_token_count(text)
        tokens += titan_token_count(text)
    assert read_json(s3, s3_bucket, f"{prefix}manifest.json.out") == {
        "totalRecordCount": 150,
        "processedRecordCount": 150,
        "successRecordCount": 150,
        "errorRecordCount": 0,
        "inputTokenCount": tokens,
        "outputTokenCount": 0,
    }
    # The same text gives the same vector on demand as in batch.
    answer = json.loads(
        runtime.invoke_model(modelId=TITAN_V2_MODEL_ID, body=json.dumps(records[7]["modelInput"]))[
            "body"
        ].read()
    )
    batch_line = next(line for line in lines if line["recordId"] == records[7]["recordId"])
    assert answer["embedding"] == batch_line["modelOutput"]["embedding"]


def test_a_folder_input_gets_one_output_per_file_and_one_manifest(
    bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    put_jsonl(s3, s3_bucket, "input/run1/part-a.jsonl", make_records(60))
    put_jsonl(s3, s3_bucket, "input/run1/part-b.jsonl", make_records(70, start=60))
    put_jsonl(s3, s3_bucket, "input/run2/other.jsonl", make_records(5, start=500))
    # No trailing slash: no object has this key, so Bedrock reads it as a folder.
    arn = bedrock.create_model_invocation_job(
        **job_request("folder", f"s3://{s3_bucket}/input/run1", f"s3://{s3_bucket}/output")
    )["jobArn"]
    job = wait_for_end(bedrock, arn)

    assert job["status"] == "Completed"
    prefix = f"output/{job_id(arn)}/"
    assert keys_under(s3, s3_bucket, prefix) == [
        f"{prefix}manifest.json.out",
        f"{prefix}part-a.jsonl.out",
        f"{prefix}part-b.jsonl.out",
    ]
    assert len(read_jsonl(s3, s3_bucket, f"{prefix}part-a.jsonl.out")) == 60
    assert {
        line["recordId"] for line in read_jsonl(s3, s3_bucket, f"{prefix}part-b.jsonl.out")
    } == {record["recordId"] for record in make_records(70, start=60)}
    manifest = read_json(s3, s3_bucket, f"{prefix}manifest.json.out")
    assert (manifest["totalRecordCount"], manifest["successRecordCount"]) == (130, 130)


def test_fewer_than_the_minimum_or_more_than_the_maximum_records_are_refused(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str, aws_env: str
) -> None:
    input_uri = put_jsonl(s3, s3_bucket, "input/small.jsonl", make_records(99))
    with pytest.raises(ClientError) as refused:
        bedrock.create_model_invocation_job(
            **job_request("too-small", input_uri, f"s3://{s3_bucket}/output/")
        )
    assert error_code(refused) == "ValidationException"
    assert "99 records" in str(refused.value) and "minimum of 100" in str(refused.value)
    assert standin.created_job_count == 0

    capped = BedrockStandIn(aws_env, max_records=120)
    capped_client = boto3.client("bedrock", region_name=REGION, endpoint_url=capped.start())
    try:
        big_uri = put_jsonl(s3, s3_bucket, "input/big.jsonl", make_records(121))
        with pytest.raises(ClientError) as too_big:
            capped_client.create_model_invocation_job(
                **job_request("too-big", big_uri, f"s3://{s3_bucket}/output/")
            )
        assert error_code(too_big) == "ValidationException"
        assert "121 records" in str(too_big.value) and "120" in str(too_big.value)
        assert capped.created_job_count == 0
    finally:
        capped.stop()


def _bad_role(request: dict[str, Any], bucket: str) -> None:
    request["roleArn"] = "arn:aws:iam::123456789012:user/not-a-role"


def _unknown_model(request: dict[str, Any], bucket: str) -> None:
    request["modelId"] = "amazon.titan-embed-text-v9:0"


def _missing_input(request: dict[str, Any], bucket: str) -> None:
    request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"] = f"s3://{bucket}/nothing/here.jsonl"


def _bad_name(request: dict[str, Any], bucket: str) -> None:
    request["jobName"] = "bad_name!"


def _missing_output_bucket(request: dict[str, Any], bucket: str) -> None:
    request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"] = "s3://no-such-bucket-here/out/"


def _timeout_too_long(request: dict[str, Any], bucket: str) -> None:
    request["timeoutDurationInHours"] = 169


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_bad_role, "at 'roleArn' failed to satisfy constraint"),
        (_unknown_model, "The provided model identifier is invalid."),
        (_missing_input, "No input files found"),
        (_bad_name, "at 'jobName' failed to satisfy constraint"),
        (_missing_output_bucket, "no-such-bucket-here"),
        (_timeout_too_long, "less than or equal to 168"),
    ],
)
def test_bad_create_requests_are_validation_errors(
    standin: BedrockStandIn,
    bedrock: BaseClient,
    s3: BaseClient,
    s3_bucket: str,
    change: Callable[[dict[str, Any], str], None],
    expected: str,
) -> None:
    input_uri = put_jsonl(s3, s3_bucket, "input/ok.jsonl", make_records(100))
    request = job_request("bad-request", input_uri, f"s3://{s3_bucket}/output/")
    change(request, s3_bucket)
    with pytest.raises(ClientError) as refused:
        bedrock.create_model_invocation_job(**request)
    assert error_code(refused) == "ValidationException"
    assert expected in refused.value.response["Error"]["Message"]
    assert standin.created_job_count == 0


@pytest.mark.parametrize(
    ("key", "body", "expected"),
    [
        ("input/broken.jsonl", '{"recordId": "a", "modelInput": {}}\n{not json\n', "line 2"),
        ("input/shape.jsonl", '{"recordId": "a", "prompt": "x"}\n', "line 1"),
        ("input/data.csv", "a,b\n", "is not a .jsonl file"),
    ],
)
def test_malformed_input_files_are_refused_and_named(
    bedrock: BaseClient, s3: BaseClient, s3_bucket: str, key: str, body: str, expected: str
) -> None:
    s3.put_object(Bucket=s3_bucket, Key=key, Body=body.encode())
    with pytest.raises(ClientError) as refused:
        bedrock.create_model_invocation_job(
            **job_request("malformed", f"s3://{s3_bucket}/{key}", f"s3://{s3_bucket}/out/")
        )
    assert error_code(refused) == "ValidationException"
    message = refused.value.response["Error"]["Message"]
    assert key in message and expected in message


def test_input_validation_can_fail_the_job_in_validating_instead(
    bedrock: BaseClient, s3: BaseClient, s3_bucket: str, aws_env: str
) -> None:
    late = BedrockStandIn(aws_env, validate_input_on_create=False)
    client = boto3.client("bedrock", region_name=REGION, endpoint_url=late.start())
    try:
        input_uri = put_jsonl(s3, s3_bucket, "input/small.jsonl", make_records(99))
        arn = client.create_model_invocation_job(
            **job_request("late-check", input_uri, f"s3://{s3_bucket}/output/")
        )["jobArn"]
        job = wait_for_end(client, arn)
        assert job["status"] == "Failed"
        assert "minimum of 100" in job["message"]
        assert late.jobs[arn].history == ["Submitted", "Validating", "Failed"]
    finally:
        late.stop()


def test_a_failed_job_has_a_message_and_no_output_and_the_next_job_is_normal(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    standin.fail_next_job("Internal failure while processing the batch")
    arn, job = run_job(bedrock, s3, s3_bucket, "fails", make_records(100))
    assert job["status"] == "Failed"
    assert job["message"] == "Internal failure while processing the batch"
    assert "endTime" in job
    assert keys_under(s3, s3_bucket, f"output/{job_id(arn)}/") == []

    _, second = run_job(bedrock, s3, s3_bucket, "after-failure", make_records(100))
    assert second["status"] == "Completed"


def test_failed_records_give_error_lines_and_a_partially_completed_job(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    standin.fail_records_in_next_job(0.1)
    arn, job = run_job(bedrock, s3, s3_bucket, "partial", make_records(150))

    assert job["status"] == "PartiallyCompleted"
    assert (job["successRecordCount"], job["errorRecordCount"]) == (135, 15)
    prefix = f"output/{job_id(arn)}/"
    lines = read_jsonl(s3, s3_bucket, f"{prefix}batch-000.jsonl.out")
    failed = [line for line in lines if "error" in line]
    assert len(lines) == 150 and len(failed) == 15
    assert all(line["error"]["errorCode"] == 400 and "modelOutput" not in line for line in failed)
    assert all(line["modelInput"]["inputText"] for line in failed)
    manifest = read_json(s3, s3_bucket, f"{prefix}manifest.json.out")
    assert (manifest["successRecordCount"], manifest["errorRecordCount"]) == (135, 15)


def test_records_the_model_rejects_fail_one_by_one_with_the_models_message(
    bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    records = make_records(148)
    records.append({"recordId": "LONG", "modelInput": {"inputText": "x" * 50_001}})
    records.append({"recordId": "BADDIM", "modelInput": {"inputText": "fine", "dimensions": 300}})
    records.append({"modelInput": {"inputText": "no record id", "dimensions": 256}})
    arn, job = run_job(bedrock, s3, s3_bucket, "model-errors", records)

    assert job["status"] == "PartiallyCompleted"
    lines = read_jsonl(s3, s3_bucket, f"output/{job_id(arn)}/batch-000.jsonl.out")
    errors = {line["recordId"]: line["error"] for line in lines if "error" in line}
    assert set(errors) == {"LONG", "BADDIM"}
    assert "expected maxLength: 50000, actual: 50001" in errors["LONG"]["errorMessage"]
    assert "#/dimensions: 300 is not a valid enum value" in errors["BADDIM"]["errorMessage"]
    assigned = [line for line in lines if line["modelInput"]["inputText"] == "no record id"]
    assert len(assigned) == 1 and assigned[0]["recordId"] == "00000000151"
    assert len(assigned[0]["modelOutput"]["embedding"]) == 256


def test_an_expired_job_never_started_and_wrote_nothing(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    standin.expire_next_job()
    arn, job = run_job(bedrock, s3, s3_bucket, "expires", make_records(100))
    assert job["status"] == "Expired"
    assert standin.jobs[arn].history[-2:] == ["Scheduled", "Expired"]
    assert "InProgress" not in standin.jobs[arn].history
    assert keys_under(s3, s3_bucket, f"output/{job_id(arn)}/") == []


def test_a_hung_job_stays_in_progress_until_stopped_and_keeps_what_it_processed(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    standin.hang_next_job()
    input_uri = put_jsonl(s3, s3_bucket, "input/hang.jsonl", make_records(150))
    arn = bedrock.create_model_invocation_job(
        **job_request("hangs", input_uri, f"s3://{s3_bucket}/output/")
    )["jobArn"]
    wait_for_status(bedrock, arn, "InProgress")
    for _ in range(5):  # several status periods later it has still not moved on
        time.sleep(0.05)
        assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "InProgress"

    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    job = wait_for_end(bedrock, arn)
    assert job["status"] == "Stopped"
    assert standin.jobs[arn].history[-3:] == ["InProgress", "Stopping", "Stopped"]
    prefix = f"output/{job_id(arn)}/"
    assert len(read_jsonl(s3, s3_bucket, f"{prefix}hang.jsonl.out")) == 75
    manifest = read_json(s3, s3_bucket, f"{prefix}manifest.json.out")
    assert (manifest["totalRecordCount"], manifest["processedRecordCount"]) == (150, 75)

    with pytest.raises(ClientError) as again:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert error_code(again) == "ConflictException"


def test_a_job_stopped_by_someone_else_before_it_started_has_no_output(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    standin.set_slow(60)
    input_uri = put_jsonl(s3, s3_bucket, "input/slow.jsonl", make_records(100))
    arn = bedrock.create_model_invocation_job(
        **job_request("slow", input_uri, f"s3://{s3_bucket}/output/")
    )["jobArn"]
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Submitted"
    standin.stop_job_externally(arn)
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopping"
    standin.set_slow(0.02)
    assert wait_for_end(bedrock, arn)["status"] == "Stopped"
    assert standin.jobs[arn].history == ["Submitted", "Stopping", "Stopped"]
    assert keys_under(s3, s3_bucket, f"output/{job_id(arn)}/") == []


def _output_lines(s3: BaseClient, bucket: str, key: str) -> list[str]:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()


@pytest.mark.parametrize(
    "kind",
    [
        "missing_output",
        "corrupt_line",
        "duplicate_ids",
        "unknown_ids",
        "wrong_dimension",
        "missing_manifest",
    ],
)
def test_corrupted_outputs_are_damaged_in_the_named_way(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str, kind: str
) -> None:
    standin.corrupt_next_job_output(kind)
    records = make_records(100)
    arn, job = run_job(bedrock, s3, s3_bucket, f"corrupt-{kind.replace('_', '-')}", records)
    assert job["status"] == "Completed"
    prefix = f"output/{job_id(arn)}/"
    output_key, manifest_key = f"{prefix}batch-000.jsonl.out", f"{prefix}manifest.json.out"
    keys = keys_under(s3, s3_bucket, prefix)
    assert (output_key in keys) == (kind != "missing_output")
    assert (manifest_key in keys) == (kind != "missing_manifest")
    if kind in ("missing_output", "missing_manifest"):
        return
    raw_lines = _output_lines(s3, s3_bucket, output_key)
    input_ids = {record["recordId"] for record in records}
    if kind == "corrupt_line":
        unreadable = 0
        for raw in raw_lines:
            try:
                json.loads(raw)
            except json.JSONDecodeError:
                unreadable += 1
        assert unreadable == 1 and len(raw_lines) == 100
        return
    lines = [json.loads(raw) for raw in raw_lines]
    ids = [line["recordId"] for line in lines]
    if kind == "duplicate_ids":
        assert len(ids) == 101 and set(ids) == input_ids
        twice = next(record_id for record_id in set(ids) if ids.count(record_id) == 2)
        vectors = [line["modelOutput"]["embedding"] for line in lines if line["recordId"] == twice]
        assert vectors[0] != vectors[1]
    elif kind == "unknown_ids":
        assert len(set(ids) - input_ids) == 1 and len(input_ids - set(ids)) == 1
    elif kind == "wrong_dimension":
        lengths = sorted(len(line["modelOutput"]["embedding"]) for line in lines)
        assert lengths[0] == 128 and lengths[1:] == [256] * 99


def test_refused_submissions_answer_the_service_error_once(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    input_uri = put_jsonl(s3, s3_bucket, "input/quota.jsonl", make_records(100))
    request = job_request("quota", input_uri, f"s3://{s3_bucket}/output/")
    standin.refuse_next_submission()
    with pytest.raises(ClientError) as refused:
        bedrock.create_model_invocation_job(**request)
    assert error_code(refused) == "ServiceQuotaExceededException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert standin.created_job_count == 0

    # boto3 retries throttling by itself: one refusal costs a retry, not the submission.
    standin.refuse_next_submission("ThrottlingException")
    created = bedrock.create_model_invocation_job(**request)
    assert created["ResponseMetadata"]["RetryAttempts"] == 1
    assert standin.created_job_count == 1


def test_the_same_client_request_token_returns_the_same_job(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    input_uri = put_jsonl(s3, s3_bucket, "input/once.jsonl", make_records(100))
    request = job_request(
        "once",
        input_uri,
        f"s3://{s3_bucket}/output/",
        clientRequestToken="fdnix-run-42-batch-0",
        tags=[{"key": "project", "value": "fdnix"}],
    )
    first = bedrock.create_model_invocation_job(**request)["jobArn"]
    second = bedrock.create_model_invocation_job(**request)["jobArn"]
    assert first == second
    assert standin.created_job_count == 1
    assert standin.jobs[first].tags == {"project": "fdnix"}
    assert bedrock.get_model_invocation_job(jobIdentifier=first)["clientRequestToken"] == (
        "fdnix-run-42-batch-0"
    )

    with pytest.raises(ClientError) as conflict:
        bedrock.create_model_invocation_job(**{**request, "clientRequestToken": "another-token"})
    assert error_code(conflict) == "ConflictException"
    assert standin.created_job_count == 1


def test_jobs_are_found_by_arn_or_id_and_unknown_ones_are_not(
    bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    arn, _ = run_job(bedrock, s3, s3_bucket, "lookup", make_records(100))
    by_arn = bedrock.get_model_invocation_job(jobIdentifier=arn)
    by_id = bedrock.get_model_invocation_job(jobIdentifier=job_id(arn))
    assert by_arn["jobArn"] == by_id["jobArn"] == arn
    assert by_arn["inputDataConfig"] == {
        "s3InputDataConfig": {
            "s3Uri": f"s3://{s3_bucket}/input/lookup/batch-000.jsonl",
            "s3InputFormat": "JSONL",
        }
    }
    assert by_arn["timeoutDurationInHours"] == 168

    with pytest.raises(ClientError) as unknown:
        bedrock.get_model_invocation_job(jobIdentifier="abcdef123456")
    assert error_code(unknown) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as malformed:
        bedrock.get_model_invocation_job(jobIdentifier="not-a-job")
    assert error_code(malformed) == "ValidationException"
    with pytest.raises(ClientError) as stop_unknown:
        bedrock.stop_model_invocation_job(jobIdentifier="abcdef123456")
    assert error_code(stop_unknown) == "ResourceNotFoundException"


@pytest.fixture
def five_jobs(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> list[dict[str, Any]]:
    input_uri = put_jsonl(s3, s3_bucket, "input/shared.jsonl", make_records(100))
    standin.fail_next_job()
    arns = [
        bedrock.create_model_invocation_job(
            **job_request(name, input_uri, f"s3://{s3_bucket}/output/")
        )["jobArn"]
        for name in ("alpha-1", "alpha-2", "beta-1", "beta-2", "beta-3")
    ]
    return [wait_for_end(bedrock, arn) for arn in arns]


def test_list_filters_sorts_and_paginates(
    bedrock: BaseClient, five_jobs: list[dict[str, Any]]
) -> None:
    arns = [job["jobArn"] for job in five_jobs]
    pages = list(
        bedrock.get_paginator("list_model_invocation_jobs").paginate(
            PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(page["invocationJobSummaries"]) for page in pages] == [2, 2, 1]
    listed = [summary["jobArn"] for page in pages for summary in page["invocationJobSummaries"]]
    assert listed == arns[::-1], "newest first by default"

    ascending = bedrock.list_model_invocation_jobs(sortBy="CreationTime", sortOrder="Ascending")
    assert [summary["jobArn"] for summary in ascending["invocationJobSummaries"]] == arns

    betas = bedrock.list_model_invocation_jobs(nameContains="beta")["invocationJobSummaries"]
    assert sorted(summary["jobName"] for summary in betas) == ["beta-1", "beta-2", "beta-3"]

    failed = bedrock.list_model_invocation_jobs(statusEquals="Failed")["invocationJobSummaries"]
    assert [summary["jobArn"] for summary in failed] == [arns[0]]

    middle = five_jobs[2]["submitTime"]
    after = bedrock.list_model_invocation_jobs(submitTimeAfter=middle, sortOrder="Ascending")
    assert [summary["jobArn"] for summary in after["invocationJobSummaries"]] == arns[3:]
    before = bedrock.list_model_invocation_jobs(
        submitTimeBefore=middle + timedelta(milliseconds=1), sortOrder="Ascending"
    )
    assert [summary["jobArn"] for summary in before["invocationJobSummaries"]] == arns[:3]

    with pytest.raises(ClientError) as bad_token:
        bedrock.list_model_invocation_jobs(nextToken="bm90LWEtdG9rZW4=")
    assert error_code(bad_token) == "ValidationException"
    with pytest.raises(ClientError) as bad_status:
        bedrock.list_model_invocation_jobs(statusEquals="Done")
    assert error_code(bad_status) == "ValidationException"


@pytest.mark.parametrize("dimensions", [256, 512, 1024])
def test_invoke_model_gives_deterministic_unit_vectors_of_the_asked_dimension(
    standin: BedrockStandIn, runtime: BaseClient, dimensions: int
) -> None:
    def embed(text: str, normalize: bool = True) -> tuple[list[float], dict[str, str]]:
        response = runtime.invoke_model(
            modelId=TITAN_V2_MODEL_ID,
            contentType="application/json",
            accept="application/json",
            body=json.dumps({"inputText": text, "dimensions": dimensions, "normalize": normalize}),
        )
        answer = json.loads(response["body"].read())
        assert answer["inputTextTokenCount"] == titan_token_count(text)
        return answer["embedding"], response["ResponseMetadata"]["HTTPHeaders"]

    text = "ripgrep: recursively searches directories for a regex"
    first, headers = embed(text)
    again, _ = embed("ripgrep: recursively searches directories for a regex")
    other, _ = embed("firefox: a web browser")
    raw, _ = embed("ripgrep: recursively searches directories for a regex", normalize=False)
    assert len(first) == len(other) == len(raw) == dimensions
    assert first == again and first != other
    assert math.isclose(math.fsum(value * value for value in first), 1.0, abs_tol=1e-5)
    assert not math.isclose(math.fsum(value * value for value in raw), 1.0, abs_tol=1e-2)
    assert headers["content-type"] == "application/json"
    assert headers["x-amzn-bedrock-input-token-count"] == str(titan_token_count(text))
    assert standin.invoke_model_calls == 4


def test_invoke_model_accepts_the_foundation_model_arn_and_embedding_types(
    runtime: BaseClient,
) -> None:
    response = runtime.invoke_model(
        modelId=f"arn:aws:bedrock:{REGION}::foundation-model/{TITAN_V2_MODEL_ID}",
        body=json.dumps(
            {"inputText": "x" * 50_000, "dimensions": 256, "embeddingTypes": ["float", "binary"]}
        ),
    )
    answer = json.loads(response["body"].read())
    assert answer["embeddingsByType"]["float"] == answer["embedding"]
    assert answer["embeddingsByType"]["binary"] == [
        1 if value > 0 else 0 for value in answer["embedding"]
    ]


@pytest.mark.parametrize(
    ("model_id", "body", "expected"),
    [
        (
            TITAN_V2_MODEL_ID,
            {"inputText": "x" * 50_001},
            "expected maxLength: 50000, actual: 50001",
        ),
        (
            TITAN_V2_MODEL_ID,
            {"inputText": "hi", "dimensions": 300},
            "300 is not a valid enum value",
        ),
        (TITAN_V2_MODEL_ID, {"inputText": "hi", "dims": 256}, "extraneous key [dims]"),
        (TITAN_V2_MODEL_ID, {"dimensions": 256}, "required key [inputText] not found"),
        (TITAN_V2_MODEL_ID, {"inputText": "hi", "normalize": "yes"}, "expected type: Boolean"),
        (TITAN_V2_MODEL_ID, "{not json", "Malformed input request, please reformat"),
        ("amazon.titan-embed-text-v9:0", {"inputText": "hi"}, "model identifier is invalid"),
    ],
)
def test_invoke_model_validation_errors(
    runtime: BaseClient, model_id: str, body: dict[str, Any] | str, expected: str
) -> None:
    payload = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(ClientError) as refused:
        runtime.invoke_model(modelId=model_id, body=payload)
    assert error_code(refused) == "ValidationException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert expected in refused.value.response["Error"]["Message"]


def test_invoke_model_can_be_throttled(standin: BedrockStandIn, runtime: BaseClient) -> None:
    standin.throttle_next_invocations(1)
    with pytest.raises(ClientError) as throttled:
        runtime.invoke_model(modelId=TITAN_V2_MODEL_ID, body=json.dumps({"inputText": "hi"}))
    assert error_code(throttled) == "ThrottlingException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    answer = runtime.invoke_model(modelId=TITAN_V2_MODEL_ID, body=json.dumps({"inputText": "hi"}))
    assert len(json.loads(answer["body"].read())["embedding"]) == 1024


def _admin(endpoint: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{endpoint}{path}", data=data, method="GET" if data is None else "POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_admin_endpoint_steers_jobs_from_another_process(
    standin: BedrockStandIn, bedrock: BaseClient, s3: BaseClient, s3_bucket: str
) -> None:
    _admin(
        standin.endpoint_url,
        "/_standin/behaviour",
        {"action": "fail_next_job", "kwargs": {"message": "steered over HTTP"}},
    )
    arn, job = run_job(bedrock, s3, s3_bucket, "steered", make_records(100))
    assert (job["status"], job["message"]) == ("Failed", "steered over HTTP")
    listed = _admin(standin.endpoint_url, "/_standin/jobs")["jobs"]
    assert [(entry["jobArn"], entry["history"][-1]) for entry in listed] == [(arn, "Failed")]

    with pytest.raises(urllib.error.HTTPError) as refused:
        _admin(standin.endpoint_url, "/_standin/behaviour", {"action": "stop"})
    assert refused.value.code == 400


def test_the_stand_in_runs_as_its_own_process(aws_env: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fdnix_assets_tests.bedrock_standin", "--s3-endpoint-url", aws_env],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:"), endpoint
        client = boto3.client("bedrock-runtime", region_name=REGION, endpoint_url=endpoint)
        answer = client.invoke_model(
            modelId=TITAN_V2_MODEL_ID, body=json.dumps({"inputText": "hello", "dimensions": 512})
        )
        assert json.loads(answer["body"].read())["embedding"] == titan_embedding("hello", 512)
        assert _admin(endpoint, "/_standin/jobs") == {"jobs": [], "invokeModelCalls": 1}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Seen once, in a full suite run beside other heavy processes: keep what the
            # kernel says about the process (its state, blocked and ignored signals).
            status = Path(f"/proc/{process.pid}/status").read_text()
            process.kill()
            process.wait()
            pytest.fail(f"the stand-in outlived SIGTERM by 10 s:\n{status}")
