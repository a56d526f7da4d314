"""The sensor path: submission recorded as a materialization, the sensor polls Bedrock, and
the run it launches ingests the vectors. A real Dagster instance, the stand-in and moto."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SensorResult,
    build_sensor_context,
    materialize,
)

from fdnix_assets.assets.embeddings import bedrock_embedding_jobs, package_embeddings
from fdnix_assets.assets.metadata import nixpkgs_packages
from fdnix_assets.definitions import build_definitions
from fdnix_assets.jobs import embedding_ingest_job
from fdnix_assets.sensors import bedrock_batch_sensor
from fdnix_assets_tests.bedrock_standin import TERMINAL_STATUSES, BedrockStandIn
from fdnix_assets_tests.embedding_helpers import (
    bedrock_settings,
    first_packages,
    make_buckets,
    read_main,
    resources_for,
    run_metadata,
    write_listing,
)


@pytest.fixture
def instance() -> Any:
    with DagsterInstance.ephemeral() as dagster_instance:
        yield dagster_instance


def tick(instance: DagsterInstance, resources: dict[str, Any], cursor: str | None) -> SensorResult:
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"embedding_backend": resources["embedding_backend"]},
    )
    result = bedrock_batch_sensor(context)
    assert isinstance(result, SensorResult)
    return result


def wait_for_jobs_to_end(standin: BedrockStandIn, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if standin.jobs and all(job.status in TERMINAL_STATUSES for job in standin.jobs.values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"jobs still running: {[j.status for j in standin.jobs.values()]}")


def submit(resources: dict[str, Any], instance: DagsterInstance) -> list[str]:
    result = materialize(
        [nixpkgs_packages, bedrock_embedding_jobs],
        selection=["bedrock_embedding_jobs"],
        resources=resources,
        instance=instance,
    )
    metadata = result.asset_materializations_for_node("bedrock_embedding_jobs")[0].metadata
    return metadata["job_arns"].value


def ingest(resources: dict[str, Any], instance: DagsterInstance, request: RunRequest) -> Any:
    defs = Definitions(
        assets=[nixpkgs_packages, package_embeddings, bedrock_embedding_jobs],
        jobs=[embedding_ingest_job],
        resources=resources,
    )
    return defs.resolve_job_def("embedding_ingest_job").execute_in_process(
        instance=instance,
        run_config=request.run_config,
        tags=request.tags,
        raise_on_error=False,
    )


def test_sensor_waits_then_launches_the_ingest_run_that_writes_the_vectors(
    tmp_path: Path, bedrock_standin: BedrockStandIn, aws_env: str, instance: DagsterInstance
) -> None:
    listing = write_listing(tmp_path / "slice.json", first_packages(450))
    settings = bedrock_settings(tmp_path, listing, *make_buckets(aws_env), bedrock_batch_size=300)
    resources = resources_for(settings)
    run_metadata(resources, instance)

    nothing = tick(instance, resources, None)
    assert (
        nothing.run_requests == [] and "no Bedrock submission" in nothing.skip_reason.skip_message
    )

    bedrock_standin.set_slow(0.5)
    arns = submit(resources, instance)
    assert len(arns) == 2 and bedrock_standin.created_job_count == 2

    waiting = tick(instance, resources, nothing.cursor)
    assert waiting.run_requests == []
    assert "waiting for Bedrock: 2 of 2 job(s)" in waiting.skip_reason.skip_message

    bedrock_standin.set_slow(0.01)
    wait_for_jobs_to_end(bedrock_standin)
    done = tick(instance, resources, waiting.cursor)
    assert len(done.run_requests) == 1
    request = done.run_requests[0]
    assert request.run_key == ",".join(arns)

    # Nothing is launched twice: the next tick has nothing left to wait for.
    after = tick(instance, resources, done.cursor)
    assert after.run_requests == [] and "no Bedrock submission" in after.skip_reason.skip_message

    result = ingest(resources, instance, request)
    assert result.success
    metadata = result.asset_materializations_for_node("package_embeddings")[0].metadata
    assert metadata["texts_embedded"].value == 450
    assert [job["re_attached"] for job in metadata["bedrock_jobs"].value] == [True, True]
    assert bedrock_standin.created_job_count == 2
    data, _ = read_main(settings)
    assert data["vector"].null_count == 0


def test_sensor_stops_jobs_past_the_max_wait_and_the_ingest_run_reports_them(
    tmp_path: Path, bedrock_standin: BedrockStandIn, aws_env: str, instance: DagsterInstance
) -> None:
    listing = write_listing(tmp_path / "slice.json", first_packages(150))
    settings = bedrock_settings(tmp_path, listing, *make_buckets(aws_env))
    resources = resources_for(settings, bedrock_max_wait_time=0.0)
    run_metadata(resources, instance)
    bedrock_standin.hang_next_job()
    (arn,) = submit(resources, instance)
    while bedrock_standin.jobs[arn].status != "InProgress":
        time.sleep(0.02)

    stopping = tick(instance, resources, None)
    assert stopping.run_requests == []
    assert "Stopping" in bedrock_standin.jobs[arn].history
    wait_for_jobs_to_end(bedrock_standin)
    done = tick(instance, resources, stopping.cursor)
    (request,) = done.run_requests
    assert request.run_key == arn

    result = ingest(resources, instance, request)
    assert not result.success
    message = result.failure_data_for_node("package_embeddings").error.message
    assert "ended Stopped" in message
    # The sensor's ingest run reports the stop instead of paying for a new job...
    assert bedrock_standin.created_job_count == 1
    # ...and keeps what the job processed before it was stopped.
    data, _ = read_main(settings)
    assert data["vector"].null_count == 75


def test_a_submission_below_the_batch_minimum_is_ingested_at_once(
    tmp_path: Path, bedrock_standin: BedrockStandIn, aws_env: str, instance: DagsterInstance
) -> None:
    listing = write_listing(tmp_path / "slice.json", first_packages(40))
    settings = bedrock_settings(tmp_path, listing, *make_buckets(aws_env))
    resources = resources_for(settings)
    run_metadata(resources, instance)
    assert submit(resources, instance) == []
    assert submit(resources, instance) == []

    # The sensor's first tick looks at the latest submission only, not the whole history.
    (request,) = tick(instance, resources, None).run_requests
    latest = instance.fetch_materializations(
        AssetKey("bedrock_embedding_jobs"), limit=1, ascending=False
    ).records[0]
    assert request.run_key == f"bedrock_embedding_jobs:{latest.storage_id}"
    result = ingest(resources, instance, request)
    assert result.success
    assert bedrock_standin.invoke_model_calls == 40 and bedrock_standin.created_job_count == 0


def test_definitions_wire_the_sensor_and_keep_submission_out_of_full_job(tmp_path: Path) -> None:
    listing = write_listing(tmp_path / "slice.json", first_packages(5))
    defs = build_definitions(bedrock_settings(tmp_path, listing, "fdnix-in", "fdnix-out"))
    sensor = defs.get_sensor_def("bedrock_batch_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.job_name == "embedding_ingest_job"
    assert sensor.minimum_interval_seconds == 60

    def selected(job_name: str) -> set[str]:
        job = defs.resolve_job_def(job_name)
        return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}

    assert "bedrock_embedding_jobs" not in selected("full_job")
    assert {"nixpkgs_packages", "package_embeddings"} <= selected("full_job")
    assert selected("embedding_job") == {"package_embeddings"}
    assert selected("bedrock_submit_job") == {"bedrock_embedding_jobs"}
    assert "package_embeddings" in selected("embedding_ingest_job")
    assert "nixpkgs_packages" not in selected("embedding_ingest_job")
