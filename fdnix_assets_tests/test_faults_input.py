"""Bad dumps through the real metadata asset: what happens to the row, what is reported, and
that the last good snapshot stays intact.

Each test first publishes a good main dataset (40 packages of the shared sample) with the real
``nixpkgs_packages`` asset, then feeds the same 40 packages plus damaged ones through
``NIXPKGS_JSON``. A damage the normalizer absorbs must leave the 40 good rows exactly as they
were, turn the bad package into a sanitized row (or leave it out) and count what it did in
the ``value_issues`` metadata; a damage it cannot absorb must fail the run and leave the
pointer where it was. In every case the previous snapshot is still there, unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize
from dagster_aws.s3 import S3Resource

from fdnix_assets.assets.metadata import attr_path_unique_and_non_empty, nixpkgs_packages
from fdnix_assets.definitions import build_resources
from fdnix_assets.normalize import INVALID_UTF8_ISSUE, MAX_LIST_ITEMS, MAX_TEXT_CHARS
from fdnix_assets.resources import NixpkgsSource
from fdnix_assets.schema import TABLE_NAME
from fdnix_assets.settings import load_settings
from fdnix_assets_tests.conftest import SAMPLE_LISTING, TEST_NIXPKGS
from fdnix_assets_tests.test_metadata_asset import failure_text
from fdnix_assets_tests.test_normalize import package

GOOD_PACKAGES = 40
DUPLICATE_OR_EMPTY = "attr_path: empty or duplicate, package left out"


@dataclass(frozen=True)
class DatasetState:
    """Where the pointer points and everything the snapshot holds (vectors are null here)."""

    snapshot_dir: str
    table: pa.Table
    schema_metadata: dict[bytes, bytes]


def read_state(path: str | Path) -> DatasetState:
    table = lancedb.connect(str(path)).open_table(TABLE_NAME)
    arrow = table.to_arrow().sort_by("attr_path")
    return DatasetState(os.path.realpath(path), arrow, dict(table.schema.metadata))


@pytest.fixture(scope="module")
def good_packages() -> dict[str, Any]:
    packages = json.loads(SAMPLE_LISTING.read_bytes())
    return {name: packages[name] for name in list(packages)[:GOOD_PACKAGES]}


@dataclass
class Published:
    """A main dataset published from the good packages, and how to run the asset again."""

    workdir: Path
    output: Path
    instance: DagsterInstance
    before: DatasetState
    good_packages: dict[str, Any]

    def run(self, dump: bytes) -> ExecuteInProcessResult:
        listing = self.workdir / f"dump-{len(list(self.workdir.glob('dump-*')))}.json"
        listing.write_bytes(dump)
        return run_metadata(self.output, listing, self.instance)

    def dump_with(self, extra: dict[str, Any]) -> bytes:
        """The good packages plus ``extra``, as nix-env would print them."""
        return json.dumps(self.good_packages | extra).encode()

    def open_dump(self) -> bytes:
        """The good packages as a JSON object still open, for members written by hand."""
        closed = self.dump_with({})
        assert closed.endswith(b"}")
        return closed[:-1]

    def assert_good_rows_unchanged(self, state: DatasetState) -> None:
        good = sorted(self.good_packages)
        kept = state.table.filter(pa.compute.is_in(state.table["attr_path"], pa.array(good)))
        assert kept.to_pylist() == self.before.table.to_pylist()

    def assert_previous_snapshot_intact(self) -> None:
        assert read_state(self.before.snapshot_dir) == self.before

    def published_state(self, result: ExecuteInProcessResult) -> DatasetState:
        """After a run that absorbed the damage: a new snapshot, the old one untouched."""
        assert result.success, failure_text(result)
        state = read_state(self.output)
        assert state.snapshot_dir != self.before.snapshot_dir
        self.assert_previous_snapshot_intact()
        self.assert_good_rows_unchanged(state)
        return state

    def assert_refused(self, result: ExecuteInProcessResult, *phrases: str) -> None:
        """After a run that could not absorb the damage: failed, named, nothing moved."""
        assert not result.success
        text = failure_text(result)
        for phrase in phrases:
            assert phrase in text, (phrase, text)
        assert result.asset_materializations_for_node("nixpkgs_packages") == []
        assert read_state(self.output) == self.before
        self.assert_previous_snapshot_intact()


def run_metadata(output: Path, listing: Path, instance: DagsterInstance) -> ExecuteInProcessResult:
    env = {"OUTPUT_PATH": str(output), "NIXPKGS_JSON": str(listing)}
    return materialize(
        [nixpkgs_packages, attr_path_unique_and_non_empty],
        resources=build_resources(load_settings(env)),
        instance=instance,
        raise_on_error=False,
    )


def value_issues(result: ExecuteInProcessResult) -> dict[str, int]:
    [materialization] = result.asset_materializations_for_node("nixpkgs_packages")
    return materialization.metadata["value_issues"].value  # type: ignore[return-value]


def unique_check_passed(result: ExecuteInProcessResult) -> bool:
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation.passed


def row_of(state: DatasetState, attr_path: str) -> dict[str, Any]:
    rows = [row for row in state.table.to_pylist() if row["attr_path"] == attr_path]
    assert len(rows) == 1, f"{len(rows)} rows for {attr_path!r}"
    return rows[0]


@pytest.fixture
def published(tmp_path: Path, good_packages: dict[str, Any]) -> Published:
    output = tmp_path / "out" / "fdnix-data.lancedb"
    instance = DagsterInstance.ephemeral()
    listing = tmp_path / "good.json"
    listing.write_text(json.dumps(good_packages))
    result = run_metadata(output, listing, instance)
    assert result.success, failure_text(result)
    assert value_issues(result) == {}
    return Published(tmp_path, output, instance, read_state(output), good_packages)


def test_duplicate_and_empty_attribute_paths(published: Published) -> None:
    # JSON lets an object repeat a key; nix-env never does, a damaged or merged dump may.
    good = published.open_dump()
    dump = (
        good
        + b', "fault-dup": '
        + json.dumps(package("fault-dup-1.0", {"description": "first"})).encode()
        + b', "fault-dup": '
        + json.dumps(package("fault-dup-2.0", {"description": "second"})).encode()
        + b', "": '
        + json.dumps(package("nameless-1.0", {})).encode()
        + b"}"
    )
    result = published.run(dump)
    state = published.published_state(result)
    assert state.table.num_rows == GOOD_PACKAGES + 1
    row = row_of(state, "fault-dup")
    # The last record of a repeated key wins, as in every JSON reader.
    assert (row["version"], row["description"]) == ("2.0", "second")
    # One record of the repeated path and the empty path are left out, and counted.
    assert value_issues(result)[DUPLICATE_OR_EMPTY] == 2
    assert unique_check_passed(result)


def test_a_repeated_attribute_path_is_counted(published: Published) -> None:
    good = published.open_dump()
    record = json.dumps(package("fault-dup-1.0", {"description": "one"})).encode()
    dump = good + b', "fault-dup": ' + record + b', "fault-dup": ' + record + b"}"
    result = published.run(dump)
    published.published_state(result)
    assert value_issues(result).get(DUPLICATE_OR_EMPTY) == 1


def test_a_10_mb_description(published: Published) -> None:
    huge = "tiling window manager " * 480_000  # 10.6 MB
    result = published.run(
        published.dump_with(
            {
                "fault-huge": package(
                    "fault-huge-1.0", {"description": huge, "longDescription": huge}
                )
            }
        )
    )
    assert len(huge) > 10_000_000
    state = published.published_state(result)
    row = row_of(state, "fault-huge")
    assert len(row["description"]) <= MAX_TEXT_CHARS
    assert huge.startswith(row["description"])
    assert len(row["long_description"]) <= MAX_TEXT_CHARS
    issues = value_issues(result)
    assert issues[f"meta.description: longer than {MAX_TEXT_CHARS} characters, truncated"] == 1
    assert issues[f"meta.longDescription: longer than {MAX_TEXT_CHARS} characters, truncated"] == 1


def test_control_characters_and_invalid_utf8(published: Published) -> None:
    good = published.open_dump()
    dump = (
        good
        + b', "fault-ctl": '
        + json.dumps(
            package(
                "fault-ctl-1.0",
                {
                    "description": "bell\x07 nul\x00 escape\x1b[31m red\ttab",
                    "homepage": "https://example.org/\x08x",
                    "mainProgram": "ctl\x7f",
                },
            )
        ).encode()
        # Latin-1 bytes, as nix-env prints a description read from a Latin-1 file.
        + b', "fault-caf\xe9": {"name": "caf\xe9-1.0", '
        + b'"meta": {"description": "cr\xe8me br\xfbl\xe9e"}}'
        + b"}"
    )
    result = published.run(dump)
    state = published.published_state(result)
    assert state.table.num_rows == GOOD_PACKAGES + 2
    ctl = row_of(state, "fault-ctl")
    assert ctl["description"] == "bell nul escape[31m red\ttab"
    assert ctl["homepages"] == ["https://example.org/x"]
    assert ctl["main_program"] == "ctl"
    latin1 = row_of(state, "fault-caf\ufffd")
    assert latin1["description"] == "cr\ufffdme br\ufffdl\ufffde"
    assert latin1["name"] == "caf\ufffd-1.0"
    issues = value_issues(result)
    assert issues["meta.description: control characters removed"] == 1
    assert issues["meta.homepage: control characters removed"] == 1
    assert issues["meta.mainProgram: control characters removed"] == 1
    assert issues[INVALID_UTF8_ISSUE] >= 1
    # Nothing that is not valid text reached the dataset.
    for column in ("attr_path", "name", "description", "main_program"):
        for value in state.table[column].to_pylist():
            assert value is None or not any(ord(c) < 32 and c not in "\t\n" for c in value)


def test_deeply_nested_meta_is_kept(published: Published) -> None:
    nested: Any = "bottom"
    for _ in range(200):
        nested = {"down": [nested]}
    result = published.run(
        published.dump_with(
            {"fault-deep": package("fault-deep-1.0", {"description": "deep", "extra": nested})}
        )
    )
    state = published.published_state(result)
    row = row_of(state, "fault-deep")
    assert row["description"] == "deep"
    assert json.loads(row["meta_json"])["extra"] == nested


def test_absurdly_nested_meta_fails_the_run_and_keeps_the_dataset(published: Published) -> None:
    depth = 5_000
    good = published.open_dump()
    dump = (
        good
        + b', "fault-abyss": {"name": "abyss-1", "meta": {"x": '
        + b"[" * depth
        + b"]" * depth
        + b"}}}"
    )
    published.assert_refused(published.run(dump), "levels deep", "not a package listing")


def test_a_thousand_licenses_on_one_package(published: Published) -> None:
    licenses = [
        {"shortName": f"lic{index}", "spdxId": f"LicenseRef-{index}", "free": index != 999}
        for index in range(1_000)
    ]
    result = published.run(
        published.dump_with(
            {"fault-licenses": package("fault-licenses-1.0", {"license": licenses})}
        )
    )
    state = published.published_state(result)
    row = row_of(state, "fault-licenses")
    assert len(row["licenses"]) == MAX_LIST_ITEMS
    assert [item["short_name"] for item in row["licenses"]] == [
        f"lic{index}" for index in range(MAX_LIST_ITEMS)
    ]
    # The raw meta keeps all thousand; only the typed column is bounded.
    assert len(json.loads(row["meta_json"])["license"]) == 1_000
    assert (
        value_issues(result)[f"meta.license: more than {MAX_LIST_ITEMS} licenses, truncated"] == 1
    )


def test_numbers_where_strings_belong(published: Published) -> None:
    meta = {
        "description": 42,
        "longDescription": 3.5,
        "homepage": 7,
        "license": 12,
        "mainProgram": 1,
        "maintainers": [{"name": 5, "email": 6, "githubId": "not-a-number"}],
        "platforms": [1, "x86_64-linux", 2],
        "broken": "yes",
        "knownVulnerabilities": [99],
    }
    numbers = package("fault-numbers-1.0", meta, pname=3, version=1.5, system=64, outputName=0)
    result = published.run(published.dump_with({"fault-numbers": numbers}))
    state = published.published_state(result)
    row = row_of(state, "fault-numbers")
    assert row["description"] is None and row["long_description"] is None
    assert row["homepages"] == [] and row["licenses"] == [] and row["main_program"] is None
    # pname and version fall back to nix's own split of the name.
    assert (row["pname"], row["version"]) == ("fault-numbers", "1.0")
    assert row["system"] is None and row["output_name"] is None
    assert row["maintainers"] == [
        {"name": None, "email": None, "github": None, "github_id": None, "matrix": None}
    ]
    assert row["platforms"] == ["x86_64-linux"]
    assert row["broken"] is False and row["known_vulnerabilities"] == []
    issues = value_issues(result)
    for key in (
        "meta.description: int where a string belongs",
        "meta.longDescription: float where a string belongs",
        "meta.homepage: int where a list belongs",
        "meta.license: int is not a license",
        "meta.mainProgram: int where a string belongs",
        "meta.maintainers.name: int where a string belongs",
        "meta.maintainers.email: int where a string belongs",
        "meta.broken: str where a boolean belongs",
        "meta.knownVulnerabilities: int in a list of strings",
        "pname: int where a string belongs",
        "version: float where a string belongs",
        "system: int where a string belongs",
        "outputName: int where a string belongs",
    ):
        assert issues.get(key) == 1, (key, issues)
    assert issues["meta.platforms: platform patterns (not strings) left out"] == 1
    assert any(key.startswith("meta.maintainers.githubId") for key in issues)


def test_control_characters_in_an_attribute_path_are_reported(published: Published) -> None:
    result = published.run(
        published.dump_with({"fault-\x1b]0;owned\x07title": package("title-1.0", {})})
    )
    state = published.published_state(result)
    # An attribute path nobody can type is not a package anyone can install: left out.
    assert state.table.num_rows == GOOD_PACKAGES
    for attr_path in state.table["attr_path"].to_pylist():
        assert not any(ord(c) < 32 or ord(c) == 127 for c in attr_path), repr(attr_path)
    assert value_issues(result) == {"attr_path: control characters, package left out": 1}


# nix-env misbehaving, through the asset (a shell script stands in for it on PATH)

NIX_ENV_FAULTS = {
    "killed": ("kill -9 $$\n", "was killed by signal 9"),
    "non-zero": ("echo 'error: evaluation aborted' >&2\nexit 1\n", "evaluation aborted"),
    "truncated": (
        'printf \'{\\n  "hello": {\\n    "name": "hello-2.12.1",\\n    "meta": {\\n\'\nexit 0\n',
        "truncated nix-env output",
    ),
    "silent": ("exit 0\n", "nix-env printed nothing"),
    "timeout": ("sleep 300 &\nwait\n", "did not finish evaluating"),
}


@pytest.mark.parametrize("fault", list(NIX_ENV_FAULTS))
def test_nix_env_faults_fail_the_run_and_keep_the_dataset(
    published: Published, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    script, phrase = NIX_ENV_FAULTS[fault]
    fake_bin = published.workdir / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "nix-env").write_text("#!/bin/sh\n" + script)
    (fake_bin / "nix-env").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    resources = build_resources(
        load_settings({"OUTPUT_PATH": str(published.output), "NIXPKGS": str(TEST_NIXPKGS)})
    )
    resources["nixpkgs_source"] = NixpkgsSource(
        nixpkgs=str(TEST_NIXPKGS), timeout_seconds=1, s3=S3Resource(region_name="us-east-1")
    )
    result = materialize(
        [nixpkgs_packages], resources=resources, instance=published.instance, raise_on_error=False
    )
    published.assert_refused(result, phrase)
    assert list((published.output.parent / ".fdnix-work").glob("*/*")) == []
