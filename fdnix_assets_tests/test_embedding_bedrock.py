"""The Bedrock backend against the stand-in (control plane + runtime) and the moto S3 server.

The phases run in-process as full_job runs them (metadata, then embeddings waiting for
Bedrock inline). Vectors are compared with the stand-in's deterministic Titan vector of each
package's text, so a record joined to the wrong package fails the test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from fdnix_assets.datasets import connect
from fdnix_assets.embedding.bedrock import (
    BedrockBatchEmbedder,
    BedrockOutputError,
    EmbeddingRequest,
    ModelInput,
    check_output_complete,
    parse_output_lines,
    plan_batches,
)
from fdnix_assets.embedding.phase import EmbeddingModel, pending_requests
from fdnix_assets.embedding.text import content_hash
from fdnix_assets_tests.bedrock_standin import BedrockStandIn, titan_embedding
from fdnix_assets_tests.embedding_helpers import (
    ROLE_ARN,
    check_results,
    embedding_metadata,
    failed_embeddings,
    make_buckets,
    publish_bedrock_slice,
    read_main,
    run_embeddings,
    run_metadata,
    texts_by_path,
    vectors_by_path,
)

MODEL = ModelInput("amazon.titan-embed-text-v2:0", 256)


@pytest.fixture
def buckets(bedrock_standin: BedrockStandIn, aws_env: str) -> tuple[str, str]:
    return make_buckets(aws_env)


def assert_vectors_match_texts(settings: Any, dimensions: int = 256) -> int:
    """Every non-null vector is the stand-in's vector of that package's own text."""
    data, _ = read_main(settings)
    texts = texts_by_path(settings)
    checked = 0
    for path, vector in vectors_by_path(data).items():
        if vector is None:
            continue
        expected = np.asarray(titan_embedding(texts[path], dimensions), dtype=np.float32)
        np.testing.assert_allclose(vector, expected, atol=1e-6, err_msg=path)
        checked += 1
    return checked


def null_vector_count(settings: Any) -> int:
    data, _ = read_main(settings)
    return data["vector"].null_count


def requests_for(count: int, prefix: str = "pkg") -> list[EmbeddingRequest]:
    requests = []
    for index in range(count):
        text = f"{prefix}{index}: a package that does thing number {index}"
        requests.append(
            EmbeddingRequest(content_hash(text, MODEL.model_id, 256), f"p{index}", text)
        )
    return requests


def embedder_for(buckets: tuple[str, str], **changes: Any) -> BedrockBatchEmbedder:
    options: dict[str, Any] = {
        "model": MODEL,
        "role_arn": ROLE_ARN,
        "input_bucket": buckets[0],
        "output_bucket": buckets[1],
        "bedrock": boto3.client("bedrock", region_name="us-east-1"),
        "runtime": boto3.client("bedrock-runtime", region_name="us-east-1"),
        "s3": boto3.client("s3", region_name="us-east-1"),
        "batch_size": 1_000,
        "poll_interval": 0.05,
        "max_wait": 60.0,
        "log": lambda message: None,
    }
    return BedrockBatchEmbedder(**(options | changes))


# The plan: pure functions


def test_plan_splits_into_balanced_jobs_and_sends_small_remainders_on_demand() -> None:
    plan = plan_batches(requests_for(2_008), MODEL, batch_size=1_000)
    assert [len(job.records) for job in plan.jobs] == [670, 669, 669]
    assert plan.on_demand == []
    assert len({job.base_name for job in plan.jobs}) == 3

    small = plan_batches(requests_for(99), MODEL, batch_size=1_000)
    assert small.jobs == [] and len(small.on_demand) == 99

    # 150 records at 100 per job: one full job, 50 left over (too few for a second job).
    tail = plan_batches(requests_for(150), MODEL, batch_size=100)
    assert [len(job.records) for job in tail.jobs] == [100]
    assert len(tail.on_demand) == 50

    with pytest.raises(ValueError, match="BEDROCK_BATCH_SIZE=50"):
        plan_batches(requests_for(10), MODEL, batch_size=50)


def test_plan_is_deterministic_whatever_the_order() -> None:
    requests = requests_for(500)
    forward = plan_batches(requests, MODEL, batch_size=200)
    backward = plan_batches(list(reversed(requests)), MODEL, batch_size=200)
    assert [job.base_name for job in forward.jobs] == [job.base_name for job in backward.jobs]
    other_model = plan_batches(requests, ModelInput(MODEL.model_id, 512), batch_size=200)
    assert {job.base_name for job in other_model.jobs}.isdisjoint(
        job.base_name for job in forward.jobs
    )


def test_output_parsing_rejects_damaged_lines() -> None:
    known = {"R1": object(), "R2": object()}
    good = b'{"recordId":"R1","modelOutput":{"embedding":[0.6,0.8],"inputTextTokenCount":3}}\n'
    error = b'{"recordId":"R2","error":{"errorCode":400,"errorMessage":"Malformed"}}\n'
    parsed = parse_output_lines(good + error, "out", known, dimensions=2)
    assert list(parsed.vectors) == ["R1"] and parsed.errors == {"R2": "400: Malformed"}
    check_output_complete(
        parsed, {"totalRecordCount": 2, "successRecordCount": 1, "errorRecordCount": 1}, 2, "j"
    )
    with pytest.raises(BedrockOutputError, match="errorRecordCount=0"):
        check_output_complete(parsed, {"errorRecordCount": 0}, 2, "j")
    with pytest.raises(BedrockOutputError, match="line 2 repeats record 'R1'"):
        parse_output_lines(good + good, "out", known, dimensions=2)
    with pytest.raises(BedrockOutputError, match="never had"):
        parse_output_lines(good.replace(b"R1", b"R9"), "out", known, dimensions=2)
    with pytest.raises(BedrockOutputError, match="3-dimensional"):
        parse_output_lines(good.replace(b"0.8]", b"0.8,0.1]"), "out", known, dimensions=2)
    with pytest.raises(BedrockOutputError, match="out line 1 is not valid JSON"):
        parse_output_lines(good[:30], "out", known, dimensions=2)


# The inline path (full_job): metadata, then embeddings waiting for Bedrock


def test_full_inline_run_on_the_sample_then_a_rerun_embeds_nothing(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, 2_008, bedrock_batch_size=1_000)

    result = run_embeddings(resources)
    metadata = embedding_metadata(result)
    assert metadata["texts_embedded"] == 2_008
    assert metadata["texts_failed"] == 0
    assert metadata["vector_coverage"] == 1.0
    assert metadata["embedding_dimensions"] == 256
    assert len(metadata["job_arns"]) == 3
    assert bedrock_standin.created_job_count == 3
    assert bedrock_standin.invoke_model_calls == 0
    assert all(job.status == "Completed" for job in bedrock_standin.jobs.values())
    assert check_results(result) == {"vector_coverage": True, "vector_dimension": True}
    assert assert_vectors_match_texts(settings) == 2_008
    _, provenance = read_main(settings)
    assert provenance is not None
    assert (provenance.embedding_model, provenance.embedding_dimensions) == (MODEL.model_id, 256)

    run_metadata(resources)
    rerun = embedding_metadata(run_embeddings(resources))
    assert rerun["texts_embedded"] == 0
    assert rerun["texts_reused"] == 2_008
    assert bedrock_standin.created_job_count == 3
    assert bedrock_standin.invoke_model_calls == 0


def test_fewer_than_100_texts_go_through_invoke_model(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, 60)
    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == 60
    assert metadata["bedrock_on_demand"] == 60
    assert bedrock_standin.invoke_model_calls == 60
    assert bedrock_standin.created_job_count == 0
    assert assert_vectors_match_texts(settings) == 60


@pytest.mark.parametrize(
    ("fraction", "retry_jobs", "retry_calls"),
    [(0.1, 0, 30), (0.5, 1, 0)],
    ids=["retry-on-demand", "retry-as-batch-job"],
)
def test_partially_completed_retries_only_the_failed_records(
    tmp_path: Path,
    bedrock_standin: BedrockStandIn,
    buckets: tuple[str, str],
    fraction: float,
    retry_jobs: int,
    retry_calls: int,
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, 300)
    bedrock_standin.fail_records_in_next_job(fraction)

    metadata = embedding_metadata(run_embeddings(resources))
    failed_first = round(fraction * 300)
    assert metadata["bedrock_retried_records"] == failed_first
    assert metadata["texts_embedded"] == 300
    first, *retries = sorted(bedrock_standin.jobs.values(), key=lambda job: job.created_order)
    assert first.status == "PartiallyCompleted"
    assert [job.record_count for job in retries] == [failed_first] * retry_jobs
    assert bedrock_standin.invoke_model_calls == retry_calls
    assert assert_vectors_match_texts(settings) == 300


def stop_when_in_progress(standin: BedrockStandIn) -> threading.Thread:
    """Stops the first job from outside (as the console would) once it is InProgress."""

    def stopper() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for job in list(standin.jobs.values()):
                if job.status == "InProgress":
                    standin.stop_job_externally(job.arn)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ending", ["Failed", "Expired", "Stopped"])
def test_a_failed_job_fails_the_run_but_keeps_the_finished_work(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str], ending: str
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, 300, bedrock_batch_size=100)
    stopper = None
    if ending == "Failed":
        bedrock_standin.fail_next_job("Internal failure while reading the input")
    elif ending == "Expired":
        bedrock_standin.expire_next_job()
    else:
        bedrock_standin.hang_next_job()
        stopper = stop_when_in_progress(bedrock_standin)

    _, message = failed_embeddings(resources)
    if stopper is not None:
        stopper.join()
    first = min(bedrock_standin.jobs.values(), key=lambda job: job.created_order)
    assert first.status == ending
    assert f"{first.name} ({first.arn}) ended {ending}" in message
    # The two jobs that completed were published; the third job's records stay null
    # (a stopped job keeps the half it processed before the stop).
    kept = {"Failed": 0, "Expired": 0, "Stopped": 50}[ending]
    assert null_vector_count(settings) == 100 - kept
    assert assert_vectors_match_texts(settings) == 200 + kept

    # The next run pays only for what is missing: a new attempt of the failed job, or (for
    # the 50 records the stopped job left) on-demand calls.
    retried = embedding_metadata(run_embeddings(resources))
    assert retried["texts_embedded"] == 100 - kept
    assert null_vector_count(settings) == 0
    if kept:
        assert bedrock_standin.created_job_count == 3
        assert bedrock_standin.invoke_model_calls == 50
    else:
        assert bedrock_standin.created_job_count == 4
        newest = max(bedrock_standin.jobs.values(), key=lambda job: job.created_order)
        assert newest.name == first.name.replace("-a1", "-a2")
        assert newest.record_count == 100


def test_a_refused_submission_is_reported_and_the_other_jobs_still_count(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, 200, bedrock_batch_size=100)
    bedrock_standin.refuse_next_submission("ServiceQuotaExceededException")

    _, message = failed_embeddings(resources)
    assert "ServiceQuotaExceededException" in message
    assert bedrock_standin.created_job_count == 1
    assert null_vector_count(settings) == 100


def test_a_retried_run_re_attaches_to_the_job_it_already_submitted(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, 250)
    # A run that submitted its job and then died before reading the results.
    bedrock_standin.set_slow(0.2)
    embedder = resources["embedding_backend"].bedrock_embedder(log=lambda message: None)
    table = connect(str(settings.output_path.resolve())).open_table("packages")
    work = pending_requests(table, EmbeddingModel(MODEL.model_id, 256, "bedrock"))
    _, states = embedder.submit(work.requests)
    assert len(states) == 1 and bedrock_standin.created_job_count == 1
    assert bedrock_standin.jobs[states[0].arn].status not in {"Completed", "PartiallyCompleted"}

    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == 250
    assert metadata["job_arns"] == [states[0].arn]
    assert metadata["bedrock_jobs"][0]["re_attached"] is True
    assert bedrock_standin.created_job_count == 1
    assert assert_vectors_match_texts(settings) == 250


def test_waiting_past_the_max_wait_stops_the_job(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    settings, resources = publish_bedrock_slice(
        tmp_path, buckets, 200, backend_changes={"bedrock_max_wait_time": 1.0}
    )
    bedrock_standin.hang_next_job()

    _, message = failed_embeddings(resources)
    job = next(iter(bedrock_standin.jobs.values()))
    assert "Stopping" in job.history and job.status == "Stopped"
    assert "BEDROCK_MAX_WAIT_TIME=1" in message and "ended Stopped" in message
    # What the job processed before the stop is kept.
    assert null_vector_count(settings) == 100


# Damaged output and truncation, through the embedder itself


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_output", "holds no .jsonl.out output"),
        ("corrupt_line", "is not valid JSON"),
        ("duplicate_ids", "repeats record"),
        ("unknown_ids", "which the job never had"),
        ("wrong_dimension", "-dimensional embedding; 256 were asked for"),
        ("missing_manifest", "has no manifest.json.out"),
    ],
)
def test_damaged_output_is_detected_and_names_the_problem(
    bedrock_standin: BedrockStandIn, buckets: tuple[str, str], kind: str, message: str
) -> None:
    bedrock_standin.corrupt_next_job_output(kind)
    report = embedder_for(buckets).embed(requests_for(150, prefix=kind))
    assert len(report.job_errors) == 1
    assert message in report.job_errors[0]
    assert report.vectors == {}


def test_text_over_the_model_limit_is_truncated_and_counted(
    bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    long_text = "tiling window manager " * 3_000  # 66,000 characters, over Titan's 50,000
    requests = [
        *requests_for(3),
        EmbeddingRequest(content_hash(long_text, MODEL.model_id, 256), "long", long_text),
    ]
    report = embedder_for(buckets).embed(requests)
    assert report.truncated == 1
    assert report.job_errors == [] and report.failed == {}
    expected = titan_embedding(long_text[:50_000], 256)
    np.testing.assert_allclose(report.vectors[requests[-1].content_hash], expected, atol=1e-6)
