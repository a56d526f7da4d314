"""`fdnix search` as people run it: a subprocess, from a path, from stdin, from s3://."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import search_support

FDNIX = Path(sys.executable).with_name("fdnix")


@pytest.fixture(scope="session")
def minified_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_support.sample_minified(tmp_path_factory.getbasetemp())


def fdnix(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(FDNIX)] if FDNIX.exists() else [sys.executable, "-m", "fdnix_assets.cli"]
    return subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_json_output_is_one_array_best_first(minified_sample: Path) -> None:
    done = fdnix("search", "memcahced", "--dataset", str(minified_sample), "--json", "--limit", "5")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert isinstance(results, list) and 1 <= len(results) <= 5
    assert results[0]["attr_path"] == "memcached"
    for result in results:
        assert {"attr_path", "pname", "version", "description", "score"} <= set(result)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_human_output_names_packages_and_flags(minified_sample: Path) -> None:
    done = fdnix("search", "gnumeric", "--dataset", str(minified_sample), "--limit", "3")
    assert done.returncode == 0, done.stderr
    first_line = done.stdout.splitlines()[0]
    assert first_line.startswith("gnumeric ")
    broken = fdnix(
        "search", "library", "--dataset", str(minified_sample), "--broken", "only", "--limit", "2"
    )
    assert "[broken" in broken.stdout


def test_stdin_batch_prints_one_array_per_line_in_order(minified_sample: Path) -> None:
    queries = "git\n\npytest\ntake a screenshot\n" + "x" * 500 + "\n"
    done = fdnix("search", "-", "--dataset", str(minified_sample), "--limit", "3", stdin=queries)
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    arrays = [json.loads(line) for line in lines]
    assert arrays[0][0]["attr_path"] == "git"
    assert arrays[1] == []
    assert arrays[2][0]["attr_path"] == "python313Packages.pytest"
    assert {"flameshot", "scrot", "maim"} & {r["attr_path"] for r in arrays[3]}
    assert arrays[4] == []
    assert "line 5" in done.stderr and done.returncode == 2


def test_default_dataset_is_output_minified_path(minified_sample: Path, tmp_path: Path) -> None:
    link = tmp_path / "out" / "fdnix.lancedb"
    link.parent.mkdir()
    link.symlink_to(minified_sample)
    done = fdnix("search", "sqlite3", "--json", env={"OUTPUT_MINIFIED_PATH": str(link)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["attr_path"] == "sqlite3"


def test_missing_dataset_and_bad_arguments_fail_clearly(tmp_path: Path) -> None:
    missing = fdnix("search", "git", "--dataset", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "no minified dataset" in missing.stderr and "Traceback" not in missing.stderr
    bad_limit = fdnix("search", "git", "--dataset", str(tmp_path), "--limit", "1000")
    assert bad_limit.returncode == 2 and "between 1 and 100" in bad_limit.stderr


def test_unknown_license_is_a_usage_error(minified_sample: Path) -> None:
    done = fdnix("search", "git", "--dataset", str(minified_sample), "--license", "nope'--")
    assert done.returncode == 2
    assert "unknown license" in done.stderr and "Traceback" not in done.stderr


def test_search_from_an_s3_uri_follows_the_latest_pointer(
    minified_sample: Path, tmp_path: Path, s3_bucket: str, aws_env: str
) -> None:
    import boto3

    from fdnix_assets.storage_s3 import S3DatasetStore

    staged = tmp_path / "staged"
    shutil.copytree(minified_sample, staged)
    store = S3DatasetStore(
        boto3.client("s3"), s3_bucket, "snapshots/fdnix.lancedb", "fdnix.lancedb"
    )
    store.publish(staged, "20261125T000000000000Z-clitest0")
    done = fdnix(
        "search", "gnumerc", "--dataset", f"s3://{s3_bucket}/snapshots/fdnix.lancedb", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["attr_path"] == "gnumeric"
    # Reading queries from stdin warms up: the vectors come into memory over S3 too.
    batch = fdnix(
        "search",
        "-",
        "--dataset",
        f"s3://{s3_bucket}/snapshots/fdnix.lancedb",
        "--json",
        stdin="gnumerc\ntake a screenshot\n",
    )
    assert batch.returncode == 0, batch.stderr
    first, second = (json.loads(line) for line in batch.stdout.splitlines())
    assert first == json.loads(done.stdout)
    assert second and batch.stderr == "", batch.stderr
    empty = fdnix("search", "git", "--dataset", f"s3://{s3_bucket}/nothing/here")
    assert empty.returncode == 1 and "no dataset snapshot" in empty.stderr
