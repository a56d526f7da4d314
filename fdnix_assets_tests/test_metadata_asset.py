"""The nixpkgs_packages asset, materialized by real Dagster into a real LanceDB dataset.

Once from the test package set through the real nix-env, once from the shared sample listing,
then runs that must fail (an aborting evaluation, invalid JSON, a collapsed row count) and
leave the previous dataset exactly as it was. And the `dagster job execute` command itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest
from dagster import DagsterEventType, DagsterInstance, ExecuteInProcessResult, materialize

from fdnix_assets.assets.metadata import nixpkgs_packages
from fdnix_assets.definitions import build_resources
from fdnix_assets.schema import (
    META_EMBEDDING_DIMENSIONS,
    META_EMBEDDING_MODEL,
    META_SOURCE,
    META_SOURCE_KIND,
    TABLE_NAME,
    main_schema,
)
from fdnix_assets.settings import LOCAL_MODEL_ID, load_settings
from fdnix_assets_tests.conftest import REPO_ROOT, TEST_NIXPKGS

TEST_SET_ROWS = 19
TEST_SET_FAILURES = {"removed-tool", "needs-feature", "python313Packages.removedlib"}


def run_asset(env: dict[str, str], instance: DagsterInstance) -> ExecuteInProcessResult:
    return materialize(
        [nixpkgs_packages],
        resources=build_resources(load_settings(env)),
        instance=instance,
        raise_on_error=False,
    )


def materialization_metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node("nixpkgs_packages")
    return {key: value.value for key, value in materialization.metadata.items()}


def failure_text(result: ExecuteInProcessResult) -> str:
    """Everything the failed step said about why (error message and Failure description)."""
    texts = []
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            texts.append(data.error.to_string() if data.error else "")
            if data.user_failure_data is not None:
                texts.append(data.user_failure_data.description or "")
    return "\n".join(texts)


def open_table(output_path: Path) -> Any:
    return lancedb.connect(str(output_path)).open_table(TABLE_NAME)


def dataset_state(output_path: Path) -> tuple[str, pa.Table, dict[bytes, bytes]]:
    """Where the pointer points, the table's contents, and its schema metadata."""
    table = open_table(output_path)
    arrow = table.to_arrow().drop_columns(["vector"]).sort_by("attr_path")
    return os.path.realpath(output_path), arrow, dict(table.schema.metadata)


@pytest.fixture
def instance() -> DagsterInstance:
    return DagsterInstance.ephemeral()


@pytest.fixture(scope="module")
def small_listing_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fdnix_assets_tests.conftest import SAMPLE_LISTING

    packages = json.loads(SAMPLE_LISTING.read_bytes())
    path = tmp_path_factory.mktemp("listing") / "small.json"
    path.write_text(json.dumps(dict(list(packages.items())[:40])))
    return path


def test_materialize_from_the_test_set_with_real_nix_env(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    if shutil.which("nix-env") is None:
        pytest.fail("nix-env is not installed: apt-get install nix-bin (.ci/run does)")
    output = tmp_path / "out" / "fdnix-data.lancedb"
    env = {"NIXPKGS": str(TEST_NIXPKGS), "OUTPUT_PATH": str(output)}
    result = run_asset(env, instance)
    assert result.success, failure_text(result)

    table = open_table(output)
    assert table.count_rows() == TEST_SET_ROWS
    arrow = table.to_arrow()
    assert arrow.schema.remove_metadata() == main_schema(384)
    rows = {row["attr_path"]: row for row in arrow.to_pylist()}
    assert rows["python313Packages.requests"]["pname"] == "requests"
    assert rows["hello"]["position"].startswith("pkgs/top-level.nix:")
    assert all(row["vector"] is None for row in rows.values())

    schema_metadata = arrow.schema.metadata
    assert schema_metadata[META_SOURCE] == str(TEST_NIXPKGS).encode()
    assert schema_metadata[META_SOURCE_KIND] == b"nix-env"
    assert schema_metadata[META_EMBEDDING_MODEL] == LOCAL_MODEL_ID.encode()
    assert schema_metadata[META_EMBEDDING_DIMENSIONS] == b"384"

    metadata = materialization_metadata(result)
    assert metadata["dagster/row_count"] == TEST_SET_ROWS
    assert metadata["source"] == str(TEST_NIXPKGS)
    assert metadata["source_kind"] == "nix-env"
    assert metadata["flag_counts"] == {
        "broken": 2,
        "insecure": 2,
        "unfree": 2,
        "unsupported": 1,
        "available": TEST_SET_ROWS - 6,
    }
    assert metadata["evaluation_failures"] == 3
    assert set(metadata["evaluation_failures_sample"]) == TEST_SET_FAILURES
    assert metadata["invalid_meta_attributes"] == {"homepage": 1, "by_wrapper": 3}
    assert metadata["value_issues"]["meta.homepage: null"] == 1
    assert metadata["value_issues"]["input: invalid UTF-8 bytes replaced with U+FFFD"] == 1
    assert metadata["nix_stderr_lines"] == 2
    assert "trace: chatty: evaluating my description" in metadata["nix_stderr_sample"]
    assert metadata["embedding_model"] == LOCAL_MODEL_ID
    assert metadata["embedding_dimensions"] == 384
    columns = metadata["dagster/column_schema"].columns
    assert [column.name for column in columns] == main_schema(384).names
    assert metadata["rows"] == TEST_SET_ROWS
    # Scratch space is gone once the snapshot is published.
    assert list((output.parent / ".fdnix-work").glob("*/*")) == []


def test_materialize_from_the_sample_listing_then_failed_runs_leave_it_alone(
    tmp_path: Path, instance: DagsterInstance, sample_listing: Path
) -> None:
    output = tmp_path / "out" / "fdnix-data.lancedb"
    base_env = {"OUTPUT_PATH": str(output)}
    result = run_asset(base_env | {"NIXPKGS_JSON": str(sample_listing)}, instance)
    assert result.success, failure_text(result)
    assert open_table(output).count_rows() == 2008
    metadata = materialization_metadata(result)
    assert metadata["dagster/row_count"] == 2008
    assert metadata["input_shape"] == "nix-env"
    assert metadata["flag_counts"]["broken"] == 29
    assert metadata["evaluation_failures"] == 0
    assert metadata["value_issues"] == {}
    assert metadata["source"] == str(sample_listing)
    before = dataset_state(output)

    aborting = tmp_path / "aborting"
    aborting.mkdir()
    (aborting / "default.nix").write_text(
        '{ config ? {} }: { hello = abort "nixpkgs: this evaluation is unsupported"; }\n'
    )
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"hello": {"name": "hello-1", "meta": {')
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(dict(list(json.loads(sample_listing.read_bytes()).items())[:5])))

    for env, expected in (
        (
            {"NIXPKGS": str(aborting)},
            ["nix-env exited 1", "nixpkgs: this evaluation is unsupported"],
        ),
        ({"NIXPKGS_JSON": str(invalid)}, ["not valid JSON", str(invalid)]),
        (
            {"NIXPKGS_JSON": str(tiny)},
            ["has 5 packages", "2,008", "max_row_drop_fraction", "the current dataset stays"],
        ),
    ):
        failed = run_asset(base_env | env, instance)
        assert not failed.success
        text = failure_text(failed)
        for phrase in expected:
            assert phrase in text, (phrase, text)
        assert failed.asset_materializations_for_node("nixpkgs_packages") == []
        assert dataset_state(output) == before
        assert list((output.parent / ".fdnix-work").glob("*/*")) == []


def test_a_drop_within_the_allowed_fraction_publishes(
    tmp_path: Path, instance: DagsterInstance, small_listing_path: Path
) -> None:
    output = tmp_path / "out" / "fdnix-data.lancedb"
    env = {"OUTPUT_PATH": str(output), "NIXPKGS_JSON": str(small_listing_path)}
    assert run_asset(env, instance).success
    first = os.path.realpath(output)
    fewer = tmp_path / "fewer.json"
    packages = json.loads(small_listing_path.read_bytes())
    fewer.write_text(json.dumps(dict(list(packages.items())[:35])))
    result = run_asset(env | {"NIXPKGS_JSON": str(fewer)}, instance)
    assert result.success, failure_text(result)
    assert materialization_metadata(result)["previous_rows"] == 40
    assert open_table(output).count_rows() == 35
    assert os.path.realpath(output) != first


def dagster_command(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    dagster = Path(sys.executable).parent / "dagster"
    return subprocess.run(
        [str(dagster), *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def clean_environment(tmp_path: Path) -> dict[str, str]:
    """The process environment without any of the contract's variables, DAGSTER_HOME in tmp."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NIXPKGS", "OUTPUT_", "BEDROCK_", "LANCEDB_", "DUCKDB_"))
        and key not in ("PROCESSING_MODE", "ARTIFACTS_BUCKET", "EMBEDDING_BACKEND", "LAYER_ARN")
    }
    home = tmp_path / "dagster-home"
    home.mkdir()
    env["DAGSTER_HOME"] = str(home)
    return env


def test_dagster_job_execute_runs_the_metadata_job(
    tmp_path: Path, small_listing_path: Path
) -> None:
    output = tmp_path / "out" / "fdnix-data.lancedb"
    env = clean_environment(tmp_path) | {
        "NIXPKGS_JSON": str(small_listing_path),
        "OUTPUT_PATH": str(output),
        "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
    }
    completed = dagster_command(
        "job", "execute", "-m", "fdnix_assets", "-j", "metadata_job", env=env
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert open_table(output).count_rows() == 40
    assert (tmp_path / "dagster-home" / "history").is_dir()


def test_dagster_job_execute_refuses_a_bad_variable(tmp_path: Path) -> None:
    env = clean_environment(tmp_path) | {
        "BEDROCK_BATCH_SIZE": "abc",
        "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
    }
    completed = dagster_command(
        "job", "execute", "-m", "fdnix_assets", "-j", "metadata_job", env=env
    )
    assert completed.returncode != 0
    assert "BEDROCK_BATCH_SIZE='abc' is not a whole number" in completed.stdout + completed.stderr
    assert not (tmp_path / "out").exists()
