"""The main dataset's asset checks and the pre-publish guard they share logic with."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from dagster import AssetKey, DagsterInstance, materialize

from fdnix_assets.assets.metadata import (
    attr_path_problems,
    attr_path_unique_and_non_empty,
    nixpkgs_packages,
    row_count_not_collapsed,
    row_drop_problem,
)
from fdnix_assets.definitions import build_resources
from fdnix_assets.settings import load_settings


def test_attr_path_problems_counts_duplicates_and_empties() -> None:
    counts = attr_path_problems(pa.array(["a", "b", "a", "", None]))
    assert counts == {"rows": 5, "distinct": 3, "empty": 2}


def test_row_drop_problem_allows_growth_and_small_drops() -> None:
    assert row_drop_problem(100, None, 0.2) is None
    assert row_drop_problem(120, 100, 0.2) is None
    assert row_drop_problem(80, 100, 0.2) is None
    problem = row_drop_problem(79, 100, 0.2)
    assert problem is not None
    assert "21% fewer" in problem and "max_row_drop_fraction" in problem


def _listing(tmp_path: Path, count: int) -> Path:
    packages = {
        f"pkg{index}": {
            "name": f"pkg{index}-1.0",
            "pname": f"pkg{index}",
            "version": "1.0",
            "system": "x86_64-linux",
            "outputName": "out",
            "outputs": {"out": None},
            "meta": {"description": f"package number {index}"},
        }
        for index in range(count)
    }
    path = tmp_path / f"listing-{count}.json"
    path.write_text(json.dumps(packages))
    return path


def test_checks_pass_on_a_published_dataset_and_see_the_row_history(tmp_path: Path) -> None:
    instance = DagsterInstance.ephemeral()
    for count in (50, 45):
        settings = load_settings(
            {
                "NIXPKGS_JSON": str(_listing(tmp_path, count)),
                "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
            }
        )
        result = materialize(
            [nixpkgs_packages, attr_path_unique_and_non_empty, row_count_not_collapsed],
            resources=build_resources(settings),
            instance=instance,
        )
        assert result.success
        evaluations = {
            evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
        }
        assert evaluations["attr_path_unique_and_non_empty"].passed
        assert evaluations["attr_path_unique_and_non_empty"].metadata["rows"].value == count
        row_check = evaluations["row_count_not_collapsed"]
        assert row_check.passed
        assert row_check.metadata["rows"].value == count
        assert row_check.metadata["previous_rows"].value == (-1 if count == 50 else 50)
    assert instance.get_latest_materialization_event(AssetKey("nixpkgs_packages")) is not None
