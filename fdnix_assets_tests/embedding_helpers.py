"""Shared pieces of the embedding tests: listings to feed the metadata phase, resources,
and running the phases the way full_job does (metadata, then embeddings) in-process."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from fdnix_assets.assets.embeddings import (
    bedrock_embedding_jobs,
    package_embeddings,
    vector_coverage_check,
    vector_dimension_check,
)
from fdnix_assets.assets.metadata import nixpkgs_packages
from fdnix_assets.datasets import DatasetProvenance, connect
from fdnix_assets.definitions import build_resources
from fdnix_assets.embedding.resource import EmbeddingBackend
from fdnix_assets.settings import Settings
from fdnix_assets_tests.conftest import SAMPLE_LISTING

ROLE_ARN = "arn:aws:iam::123456789012:role/fdnix-bedrock-batch"
FAST_POLL_SECONDS = 0.05


def sample_packages() -> dict[str, Any]:
    """The 2k sample listing as a dict keyed by attribute path (nix-env order kept)."""
    return json.loads(SAMPLE_LISTING.read_bytes())


def write_listing(path: Path, packages: dict[str, Any]) -> Path:
    path.write_text(json.dumps(packages))
    return path


def first_packages(count: int) -> dict[str, Any]:
    packages = sample_packages()
    return {name: packages[name] for name in list(packages)[:count]}


def local_settings(workdir: Path, listing: Path) -> Settings:
    return Settings(
        nixpkgs_json=str(listing),
        output_path=workdir / "out" / "fdnix-data.lancedb",
        output_minified_path=workdir / "out" / "fdnix.lancedb",
    )


def make_buckets(endpoint: str) -> tuple[str, str]:
    """Fresh Bedrock input and output buckets on the moto server."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    names = (f"fdnix-in-{uuid.uuid4().hex[:10]}", f"fdnix-out-{uuid.uuid4().hex[:10]}")
    for name in names:
        s3.create_bucket(Bucket=name)
    return names


def bedrock_settings(
    workdir: Path, listing: Path, input_bucket: str, output_bucket: str, **changes: Any
) -> Settings:
    return replace(
        local_settings(workdir, listing),
        embedding_backend="bedrock",
        bedrock_role_arn=ROLE_ARN,
        bedrock_input_bucket=input_bucket,
        bedrock_output_bucket=output_bucket,
        **changes,
    )


def resources_for(settings: Settings, **backend_changes: Any) -> dict[str, Any]:
    """The real resources for ``settings``; Bedrock polls fast unless told otherwise."""
    resources = build_resources(settings)
    backend: EmbeddingBackend = resources["embedding_backend"]
    fields = {name: getattr(backend, name) for name in EmbeddingBackend.model_fields}
    overrides = {"bedrock_poll_interval": FAST_POLL_SECONDS} | backend_changes
    resources["embedding_backend"] = EmbeddingBackend(**(fields | overrides))
    return resources


def run_metadata(resources: dict[str, Any], instance: DagsterInstance | None = None) -> None:
    result = materialize([nixpkgs_packages], resources=resources, instance=instance)
    assert result.success


def run_embeddings(
    resources: dict[str, Any],
    instance: DagsterInstance | None = None,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    """package_embeddings and its checks, reading the latest main snapshot."""
    return materialize(
        [
            nixpkgs_packages,
            package_embeddings,
            bedrock_embedding_jobs,
            vector_coverage_check,
            vector_dimension_check,
        ],
        selection=["package_embeddings"],
        resources=resources,
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def publish_bedrock_slice(
    workdir: Path,
    buckets: tuple[str, str],
    packages: int,
    backend_changes: dict[str, Any] | None = None,
    **settings_changes: Any,
) -> tuple[Settings, dict[str, Any]]:
    """The first ``packages`` of the sample published as the main dataset, ready for a
    Bedrock embedding run; returns the settings and the resources for that run."""
    listing = write_listing(workdir / "slice.json", first_packages(packages))
    settings = bedrock_settings(workdir, listing, *buckets, **settings_changes)
    resources = resources_for(settings, **(backend_changes or {}))
    run_metadata(resources)
    return settings, resources


def failed_embeddings(resources: dict[str, Any]) -> tuple[ExecuteInProcessResult, str]:
    """An embedding run that must fail, and the error message its step failed with."""
    result = run_embeddings(resources, raise_on_error=False)
    assert not result.success, "the embedding run was expected to fail"
    failure = result.failure_data_for_node("package_embeddings")
    assert failure is not None and failure.error is not None
    return result, failure.error.message


def embedding_metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    materializations = result.asset_materializations_for_node("package_embeddings")
    assert materializations, "package_embeddings was not materialized"
    return {
        key: getattr(value, "value", value) for key, value in materializations[-1].metadata.items()
    }


def check_results(result: ExecuteInProcessResult) -> dict[str, bool]:
    return {check.check_name: check.passed for check in result.get_asset_check_evaluations()}


def read_main(settings: Settings) -> tuple[pa.Table, DatasetProvenance | None]:
    """attr_path, content_hash and vector of the published main dataset, by attr_path."""
    table = connect(str(settings.output_path.resolve())).open_table("packages")
    data = table.search().select(["attr_path", "content_hash", "vector"]).limit(None).to_arrow()
    return data.sort_by("attr_path"), DatasetProvenance.from_schema(table.schema)


def vectors_by_path(data: pa.Table) -> dict[str, np.ndarray | None]:
    vectors = data["vector"].to_pylist()
    return {
        path: None if vector is None else np.asarray(vector, dtype=np.float32)
        for path, vector in zip(data["attr_path"].to_pylist(), vectors, strict=True)
    }


def texts_by_path(settings: Settings) -> dict[str, str]:
    """Each package's embedding text, recomputed from the published main dataset."""
    from fdnix_assets.embedding.text import embedding_text

    table = connect(str(settings.output_path.resolve())).open_table("packages")
    columns = ["attr_path", "main_program", "description", "long_description"]
    data = table.search().select(columns).limit(None).to_arrow().to_pydict()
    return {
        path: embedding_text(path, program, description, long_description)
        for path, program, description, long_description in zip(
            *(data[name] for name in columns), strict=True
        )
    }
