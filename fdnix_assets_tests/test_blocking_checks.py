"""Blocking checks: a bad artifact never flows on. Each test publishes or builds a dataset
that fails one check, runs the check together with what comes after it, and shows that the
downstream step never started and wrote nothing (the Lambda layer on the moto server)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
)
from dagster_aws.s3 import S3Resource

from fdnix_assets.assets.embeddings import DEFAULT_MIN_VECTOR_COVERAGE
from fdnix_assets.assets.layer import LAYER_ASSET, LambdaLayerPublisher
from fdnix_assets.assets.metadata import ROW_COUNT_CHECK, UNIQUE_ATTR_PATH_CHECK
from fdnix_assets.assets.minified import SIZE_CHECK, SMOKE_CHECK
from fdnix_assets.datasets import DatasetProvenance, open_packages, write_packages
from fdnix_assets.definitions import build_definitions
from fdnix_assets.layer import list_layer_versions
from fdnix_assets.normalize import normalize_listing
from fdnix_assets.resources import DatasetStorage
from fdnix_assets.schema import vector_type
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID, load_settings
from fdnix_assets_tests.conftest import run_selection
from fdnix_assets_tests.embedding_helpers import first_packages, write_listing
from fdnix_assets_tests.samples import local_model_provenance

MAIN = AssetKey("nixpkgs_packages")
EMBEDDINGS = AssetKey("package_embeddings")
MINIFIED = AssetKey("minified_dataset")
SNAPSHOT_ID = "20261125T000000000000Z-blocking"


def definitions_for(tmp_path: Path, **variables: str) -> Definitions:
    return build_definitions(
        load_settings(
            {
                "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
                "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
            }
            | variables
        )
    )


def storage_of(definitions: Definitions) -> DatasetStorage:
    storage = definitions.resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage)
    return storage


def started_steps(result: ExecuteInProcessResult) -> set[str]:
    return {
        event.step_key
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_START and event.step_key
    }


def evaluation(result: ExecuteInProcessResult, name: str) -> Any:
    (found,) = [item for item in result.get_asset_check_evaluations() if item.check_name == name]
    return found


def check(asset: AssetKey, name: str) -> AssetSelection:
    return AssetSelection.checks(AssetCheckKey(asset, name))


def main_table(packages: int, with_vectors: int = 0, norm: float = 1.0) -> pa.Table:
    """The first ``packages`` of the sample, normalized; the first ``with_vectors`` rows get
    vectors of length ``norm`` (random but fixed: the checks judge coverage and shape, not
    meaning)."""
    table = normalize_listing(
        json.dumps(first_packages(packages)).encode(),
        model_id=LOCAL_MODEL_ID,
        dimensions=LOCAL_MODEL_DIMENSIONS,
    ).table
    if with_vectors:
        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(table.num_rows, LOCAL_MODEL_DIMENSIONS)).astype(np.float32)
        vectors *= norm / np.linalg.norm(vectors, axis=1, keepdims=True)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        mask = pa.array([index >= with_vectors for index in range(table.num_rows)])
        column = pa.array(flat.to_pylist(), vector_type(LOCAL_MODEL_DIMENSIONS), mask=mask)
        table = table.set_column(
            table.schema.get_field_index("vector"),
            pa.field("vector", vector_type(LOCAL_MODEL_DIMENSIONS)),
            column,
        )
    return table


def publish_main(storage: DatasetStorage, table: pa.Table, staging: Path) -> None:
    provenance = local_model_provenance("test")
    write_packages(staging, table, provenance)
    storage.store("main").publish(staging, SNAPSHOT_ID)


def layer_versions(endpoint: str, name: str) -> list[Any]:
    client = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1")
    return list_layer_versions(client, name)


def test_duplicate_attr_paths_stop_the_embedding_phase(tmp_path: Path) -> None:
    definitions = definitions_for(tmp_path)
    storage = storage_of(definitions)
    table = main_table(20)
    publish_main(storage, pa.concat_tables([table, table.slice(0, 3)]), tmp_path / "dupes")

    with DagsterInstance.ephemeral() as instance:
        result = run_selection(
            definitions,
            check(MAIN, UNIQUE_ATTR_PATH_CHECK) | AssetSelection.assets(EMBEDDINGS),
            instance,
        )
    unique = evaluation(result, UNIQUE_ATTR_PATH_CHECK)
    assert not unique.passed and unique.severity == AssetCheckSeverity.ERROR
    assert unique.metadata["rows"].value == 23 and unique.metadata["distinct"].value == 20
    assert "package_embeddings" not in started_steps(result)
    assert result.asset_materializations_for_node("package_embeddings") == []
    assert open_packages(storage.store("main").require_latest()).count_rows() == 23


def test_a_collapsed_row_count_stops_the_embedding_phase_unless_allowed(tmp_path: Path) -> None:
    listings = tmp_path / "listings"
    listings.mkdir()
    selection = (
        AssetSelection.assets(MAIN, EMBEDDINGS)
        | check(MAIN, ROW_COUNT_CHECK)
        | check(MAIN, UNIQUE_ATTR_PATH_CHECK)
    )
    with DagsterInstance.ephemeral() as instance:

        def metadata_run(
            packages: int, output: str, max_drop: float | None = None, embed: bool = False
        ) -> ExecuteInProcessResult:
            # Each run writes to a fresh output, as after a lost or re-created bucket: the
            # asset finds no previous snapshot to compare with, only the check's history
            # (the instance's materializations) shows the collapse.
            listing = write_listing(listings / f"{packages}.json", first_packages(packages))
            definitions = definitions_for(
                tmp_path / output,
                NIXPKGS_JSON=str(listing),
            )
            config = {} if max_drop is None else {"max_row_drop_fraction": max_drop}
            return run_selection(
                definitions,
                selection if embed else AssetSelection.assets(MAIN) | check(MAIN, ROW_COUNT_CHECK),
                instance,
                run_config={"ops": {"nixpkgs_packages": {"config": config}}},
            )

        assert metadata_run(50, "a").success
        allowed = metadata_run(10, "b", max_drop=0.9)
        row_check = evaluation(allowed, ROW_COUNT_CHECK)
        assert row_check.passed, row_check.description
        assert row_check.metadata["max_row_drop_fraction"].value == 0.9
        assert row_check.metadata["previous_rows"].value == 50

        collapsed = metadata_run(2, "c", embed=True)
    row_check = evaluation(collapsed, ROW_COUNT_CHECK)
    assert not row_check.passed and row_check.severity == AssetCheckSeverity.ERROR
    assert "80% fewer" in (row_check.description or "")
    assert {"nixpkgs_packages", "nixpkgs_packages_row_count_not_collapsed"} <= started_steps(
        collapsed
    )
    assert "package_embeddings" not in started_steps(collapsed)
    assert collapsed.asset_materializations_for_node("package_embeddings") == []


def test_low_vector_coverage_stops_the_minified_dataset(tmp_path: Path) -> None:
    definitions = definitions_for(tmp_path)
    storage = storage_of(definitions)
    publish_main(storage, main_table(40, with_vectors=30), tmp_path / "partial")
    embeddings_check = check(EMBEDDINGS, "vector_coverage")

    with DagsterInstance.ephemeral() as instance:
        blocked = run_selection(
            definitions, embeddings_check | AssetSelection.assets(MINIFIED), instance
        )
        coverage = evaluation(blocked, "vector_coverage")
        assert not coverage.passed and coverage.severity == AssetCheckSeverity.ERROR
        assert coverage.metadata["coverage"].value == 0.75
        assert coverage.metadata["min_coverage"].value == DEFAULT_MIN_VECTOR_COVERAGE
        assert "minified_dataset" not in started_steps(blocked)
        assert storage.store("minified").latest() is None

        # An operator who accepts 75% coverage lowers min_coverage: the check then warns.
        lenient = run_selection(
            definitions,
            embeddings_check,
            instance,
            run_config={
                "ops": {"package_embeddings_vector_coverage": {"config": {"min_coverage": 0.7}}}
            },
        )
    assert lenient.success
    coverage = evaluation(lenient, "vector_coverage")
    assert not coverage.passed and coverage.severity == AssetCheckSeverity.WARN


def test_vectors_that_are_not_unit_length_stop_the_minified_dataset(tmp_path: Path) -> None:
    definitions = definitions_for(tmp_path)
    storage = storage_of(definitions)
    publish_main(storage, main_table(30, with_vectors=30, norm=3.0), tmp_path / "scaled")

    with DagsterInstance.ephemeral() as instance:
        result = run_selection(
            definitions,
            check(EMBEDDINGS, "vector_dimension") | AssetSelection.assets(MINIFIED),
            instance,
        )
    dimension = evaluation(result, "vector_dimension")
    assert not dimension.passed and dimension.severity == AssetCheckSeverity.ERROR
    assert "30 of 30 sampled vectors are not unit length" in (dimension.description or "")
    assert "minified_dataset" not in started_steps(result)
    assert storage.store("minified").latest() is None


def test_a_minified_dataset_failing_the_smoke_search_is_not_published_as_a_layer(
    tmp_path: Path, aws_env: str
) -> None:
    name = f"fdnix-smoke-{uuid.uuid4().hex[:8]}"
    definitions = definitions_for(tmp_path, PUBLISH_LAYER="true", LAYER_ARN=name)
    # A LanceDB dataset with a packages table that search cannot use (no name index).
    staged = tmp_path / "unsearchable.lancedb"
    write_packages(
        staged,
        pa.table({"attr_path": ["hello", "git"], "description": ["greets", "tracks"]}),
        DatasetProvenance("test", "file", LOCAL_MODEL_ID, LOCAL_MODEL_DIMENSIONS, "local"),
    )
    storage_of(definitions).store("minified").publish(staged, SNAPSHOT_ID)

    with DagsterInstance.ephemeral() as instance:
        result = run_selection(
            definitions, check(MINIFIED, SMOKE_CHECK) | AssetSelection.assets(LAYER_ASSET), instance
        )
    smoke = evaluation(result, SMOKE_CHECK)
    assert not smoke.passed and smoke.severity == AssetCheckSeverity.ERROR
    assert "cannot open the minified dataset" in (smoke.description or "")
    assert "lambda_layer_version" not in started_steps(result)
    assert layer_versions(aws_env, name) == []


@pytest.fixture(scope="module")
def embedded_main_table() -> pa.Table:
    return main_table(60, with_vectors=60)


def test_a_minified_dataset_over_the_layer_budget_is_not_published_as_a_layer(
    tmp_path: Path, aws_env: str, embedded_main_table: pa.Table
) -> None:
    name = f"fdnix-budget-{uuid.uuid4().hex[:8]}"
    definitions = definitions_for(tmp_path, PUBLISH_LAYER="true", LAYER_ARN=name)
    publish_main(storage_of(definitions), embedded_main_table, tmp_path / "main")
    # A function package and other layers that leave this layer 1 kB of Lambda's limit.
    crowded = LambdaLayerPublisher(
        enabled=True,
        layer_arn=name,
        reserved_unzipped_bytes=LambdaLayerPublisher.model_fields["unzipped_limit_bytes"].default
        - 1_000,
        s3=S3Resource(),
    )
    selection = (
        AssetSelection.assets(MINIFIED, LAYER_ASSET)
        | check(MINIFIED, SMOKE_CHECK)
        | check(MINIFIED, SIZE_CHECK)
    )

    with DagsterInstance.ephemeral() as instance:
        blocked = run_selection(
            definitions, selection, instance, resources={"layer_publisher": crowded}
        )
        (minified,) = blocked.asset_materializations_for_node("minified_dataset")
        assert minified.metadata["dagster/row_count"].value == 60
        size = evaluation(blocked, SIZE_CHECK)
        assert not size.passed and size.severity == AssetCheckSeverity.ERROR
        assert size.metadata["limit_bytes"].value == 1_000
        assert size.metadata["total_bytes"].value > 1_000
        assert evaluation(blocked, SMOKE_CHECK).passed
        assert "lambda_layer_version" not in started_steps(blocked)
        assert layer_versions(aws_env, name) == []

        # The same dataset within the default budget is published: the check was the stop.
        published = run_selection(
            definitions, AssetSelection.assets(LAYER_ASSET) | check(MINIFIED, SIZE_CHECK), instance
        )
    assert published.success
    assert evaluation(published, SIZE_CHECK).passed
    assert [version.version for version in layer_versions(aws_env, name)] == [1]
