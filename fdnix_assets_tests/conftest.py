"""Shared fixtures: the sample listings, a real moto server on 127.0.0.1, AWS test env."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Variables of the developer's shell that would change what a run started by a test does.
RUN_CONFIG_VARIABLES = (
    "DAGSTER_HOME",
    "PROCESSING_MODE",
    "DUCKDB_KEY",
    "NIXPKGS",
    "NIXPKGS_JSON",
    "ARTIFACTS_BUCKET",
    "OUTPUT_PATH",
    "OUTPUT_MINIFIED_PATH",
    "LANCEDB_PATH",
    "LANCEDB_DATA_KEY",
    "LANCEDB_MINIFIED_KEY",
    "PUBLISH_LAYER",
    "LAYER_ARN",
    "EMBEDDING_BACKEND",
    "FDNIX_CHANNELS",
    "FDNIX_CHANNEL",
)
SHARED_FIXTURES = Path(
    os.environ.get("FDNIX_SHARED_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")
)
SAMPLE_LISTING = SHARED_FIXTURES / "nixpkgs-sample-2k.json"
FULL_LISTING = SHARED_FIXTURES / "nixpkgs-realistic.json.zst"
DEV_QUERIES = SHARED_FIXTURES / "queries-dev.jsonl"
TEST_NIXPKGS = Path(__file__).resolve().parent / "nixpkgs"

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_SESSION_TOKEN": "testing-token",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server (S3, Lambda, ...) over HTTP on 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Points boto3 (and anything reading the standard variables) at the moto server."""
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws_env: str) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"fdnix-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def sample_listing() -> Path:
    assert SAMPLE_LISTING.is_file(), f"shared fixture {SAMPLE_LISTING} is missing"
    return SAMPLE_LISTING


@pytest.fixture
def bedrock_standin(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A local Bedrock (batch jobs + Titan v2 InvokeModel) on 127.0.0.1 over the moto S3.

    Yields a ``fdnix_assets_tests.bedrock_standin.BedrockStandIn``; boto3 reaches it through
    AWS_ENDPOINT_URL_BEDROCK / AWS_ENDPOINT_URL_BEDROCK_RUNTIME."""
    from fdnix_assets_tests.bedrock_standin import BedrockStandIn

    standin = BedrockStandIn(aws_env)
    endpoint = standin.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", endpoint)
    yield standin
    standin.stop()


def run_selection(
    definitions: Any,
    selection: Any,
    instance: Any,
    run_config: dict[str, Any] | None = None,
    resources: dict[str, Any] | None = None,
) -> Any:
    """Runs exactly ``selection`` (a dagster AssetSelection of assets and checks) with the
    definitions' resources; returns the ExecuteInProcessResult, failed or not."""
    from dagster import Definitions, define_asset_job

    job = define_asset_job("selection_job", selection=selection)
    return (
        Definitions(
            assets=definitions.assets,
            asset_checks=definitions.asset_checks,
            resources={**(definitions.resources or {}), **(resources or {})},
            jobs=[job],
        )
        .resolve_job_def("selection_job")
        .execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    )
