"""normalize_listing on hand-written listings and on the shared 2,008-package sample.

Every loose shape nix's meta takes must end up in one typed column; every bad value must become
a null or an empty list and be counted, never crash the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fdnix_assets.embedding.text import MAX_TEXT_CHARS as MAX_EMBEDDING_TEXT_CHARS
from fdnix_assets.embedding.text import content_hash, embedding_text
from fdnix_assets.normalize import (
    INVALID_UTF8_ISSUE,
    MAX_LIST_ITEMS,
    MAX_TEXT_CHARS,
    InvalidDumpError,
    NormalizedPackages,
    common_channel_prefix,
    normalize_listing,
    relative_position,
    split_derivation_name,
)
from fdnix_assets.schema import main_schema
from fdnix_assets_tests.samples import MIT_LICENSE_META, MIT_LICENSE_ROW, license_row

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384
FLAGS = ("broken", "insecure", "unfree", "unsupported")


def package(name: str, meta: Any = None, **fields: Any) -> dict[str, Any]:
    """One record in nix-env's shape; ``fields`` override name/pname/version/outputs..."""
    pname, version = split_derivation_name(name)
    record = {
        "name": name,
        "pname": pname,
        "version": version,
        "system": "x86_64-linux",
        "outputName": "out",
        "outputs": {"out": None},
        "meta": {} if meta is None else meta,
    }
    record.update(fields)
    return record


def normalize(packages: dict[str, Any] | bytes, **kwargs: Any) -> NormalizedPackages:
    data = packages if isinstance(packages, bytes) else json.dumps(packages).encode()
    return normalize_listing(data, model_id=MODEL_ID, dimensions=DIMENSIONS, **kwargs)


def rows_of(normalized: NormalizedPackages) -> dict[str, dict[str, Any]]:
    return {row["attr_path"]: row for row in normalized.table.to_pylist()}


def only_row(meta: Any = None, **fields: Any) -> tuple[dict[str, Any], Counter[str]]:
    normalized = normalize({"pkg": package(fields.pop("name", "pkg-1.0"), meta, **fields)})
    assert normalized.row_count == 1
    return normalized.table.to_pylist()[0], normalized.issues


def test_the_table_has_exactly_the_main_schema() -> None:
    normalized = normalize({"hello": package("hello-2.12", {"description": "Greets"})})
    assert normalized.table.schema == main_schema(DIMENSIONS)
    assert normalized.table.schema.field("vector").type == pa.list_(
        pa.field("item", pa.float32()), DIMENSIONS
    )


def test_license_shapes() -> None:
    mit, mit_row = MIT_LICENSE_META, MIT_LICENSE_ROW
    unfree = {"shortName": "unfree", "fullName": "Unfree", "free": False}
    rows = rows_of(
        normalize(
            {
                "as-attrset": package("a-1", {"license": mit}),
                "as-list": package("b-1", {"license": [mit, unfree]}),
                "as-string": package("c-1", {"license": "  GPL  "}),
                "absent": package("d-1", {}),
                "empty-list": package("e-1", {"license": []}),
            }
        )
    )
    assert rows["as-attrset"]["licenses"] == [mit_row]
    assert rows["as-list"]["licenses"] == [
        mit_row,
        license_row(short_name="unfree", full_name="Unfree", free=False),
    ]
    # A license list with an unfree member makes the package unfree when meta does not say.
    assert rows["as-list"]["unfree"] is True
    assert rows["as-list"]["available"] is False
    assert rows["as-string"]["licenses"] == [license_row(short_name="GPL")]
    assert rows["absent"]["licenses"] == []
    assert rows["empty-list"]["licenses"] == []


def test_homepage_maintainer_team_and_provenance_shapes() -> None:
    meta = {
        "homepage": ["https://a.example/", "https://b.example/"],
        "maintainers": [
            {
                "name": "Ada",
                "email": "ada@example.org",
                "github": "ada",
                "githubId": "4242",
                "matrix": "@ada:example.org",
                "keys": [{"fingerprint": "AAAA"}],
            },
            "Old Style <old@example.org>",
        ],
        "teams": [
            {
                "shortName": "Rust",
                "scope": "Rust things",
                "githubTeams": "rust",
                "members": [{"name": "Ferris", "githubId": 7}],
            }
        ],
        "sourceProvenance": [{"isSource": True, "shortName": "fromSource"}, "binaryNativeCode"],
        "platforms": ["x86_64-linux", {"kernel": {"name": "linux"}}],
        "badPlatforms": "aarch64-darwin",
        "mainProgram": "tool",
        "changelog": "https://a.example/NEWS",
        "downloadPage": "https://a.example/download",
        "outputsToInstall": ["bin", "man"],
    }
    row, issues = only_row(meta, outputName="bin", outputs=["bin", "out", "man"])
    assert row["homepages"] == ["https://a.example/", "https://b.example/"]
    assert row["maintainers"] == [
        {
            "name": "Ada",
            "email": "ada@example.org",
            "github": "ada",
            "github_id": 4242,
            "matrix": "@ada:example.org",
        },
        {
            "name": "Old Style <old@example.org>",
            "email": None,
            "github": None,
            "github_id": None,
            "matrix": None,
        },
    ]
    assert row["teams"] == [
        {
            "short_name": "Rust",
            "scope": "Rust things",
            "github_teams": ["rust"],
            "members": [
                {"name": "Ferris", "email": None, "github": None, "github_id": 7, "matrix": None}
            ],
        }
    ]
    assert row["source_provenance"] == ["fromSource", "binaryNativeCode"]
    assert row["platforms"] == ["x86_64-linux"]
    assert issues["meta.platforms: platform patterns (not strings) left out"] == 1
    assert row["bad_platforms"] == ["aarch64-darwin"]
    assert (row["main_program"], row["changelog"], row["download_page"]) == (
        "tool",
        "https://a.example/NEWS",
        "https://a.example/download",
    )
    assert (row["output_name"], row["outputs"], row["outputs_to_install"]) == (
        "bin",
        ["bin", "out", "man"],
        ["bin", "man"],
    )
    assert json.loads(row["meta_json"]) == meta


def test_a_null_meta_field_becomes_null_and_is_counted() -> None:
    row, issues = only_row({"description": None, "homepage": None, "maintainers": None})
    assert (row["description"], row["homepages"], row["maintainers"]) == (None, [], [])
    assert issues["meta.description: null"] == 1
    assert issues["meta.homepage: null"] == 1
    assert issues["meta.maintainers: null"] == 1


def test_wrong_types_become_nulls_or_empty_lists_and_are_counted() -> None:
    meta = {
        "description": ["a", "list"],
        "longDescription": 42,
        "homepage": {"url": "https://x.example"},
        "maintainers": {"name": "not in a list"},
        "teams": ["not a team"],
        "license": 3,
        "broken": "yes",
        "knownVulnerabilities": "CVE-1",
        "mainProgram": False,
        "platforms": 7,
    }
    row, issues = only_row(meta)
    assert row["description"] is None
    assert row["long_description"] is None
    assert row["homepages"] == []
    assert row["maintainers"] == []
    assert row["teams"] == []
    assert row["licenses"] == []
    assert row["broken"] is False
    assert row["known_vulnerabilities"] == ["CVE-1"]
    assert row["insecure"] is True
    assert row["main_program"] is None
    assert row["platforms"] == []
    assert issues == Counter(
        {
            "meta.description: list where a string belongs": 1,
            "meta.longDescription: int where a string belongs": 1,
            "meta.homepage: dict where a list belongs": 1,
            "meta.maintainers: dict where a list belongs": 1,
            "meta.teams: str is not a team": 1,
            "meta.license: int is not a license": 1,
            "meta.broken: str where a boolean belongs": 1,
            "meta.mainProgram: bool where a string belongs": 1,
            "meta.platforms: int where a list belongs": 1,
        }
    )


def test_a_number_as_version_falls_back_to_the_name() -> None:
    row, issues = only_row({}, name="tool-1.5", pname=7, version=1.5)
    assert (row["pname"], row["version"]) == ("tool", "1.5")
    assert issues["version: float where a string belongs"] == 1
    assert issues["pname: int where a string belongs"] == 1


def test_the_wrappers_pname_and_version_win_over_the_split_name() -> None:
    meta = {"_fdnix": {"pname": "requests", "version": "2.32.3", "invalidMeta": ["description"]}}
    normalized = normalize(
        {"python313Packages.requests": package("python3.13-requests-2.32.3", meta)}
    )
    row = normalized.table.to_pylist()[0]
    assert (row["pname"], row["version"]) == ("requests", "2.32.3")
    assert normalized.invalid_meta == {"python313Packages.requests": ["description"]}
    assert "_fdnix" not in json.loads(row["meta_json"])


def test_evaluation_failures_are_listed_not_rowed() -> None:
    normalized = normalize(
        {
            "ok": package("ok-1"),
            "python313Packages.gone": package(
                "fdnix-evaluation-failed-gone", {"_fdnix": {"evaluationFailed": True}}
            ),
        }
    )
    assert normalized.table["attr_path"].to_pylist() == ["ok"]
    assert normalized.evaluation_failures == ["python313Packages.gone"]


@pytest.mark.parametrize(
    ("github_id", "expected"),
    [(12, 12), ("12", 12), ("twelve", None), (-1, None), (2**70, None), (True, None)],
)
def test_github_ids(github_id: Any, expected: int | None) -> None:
    row, issues = only_row({"maintainers": [{"name": "M", "githubId": github_id}]})
    assert row["maintainers"][0]["github_id"] == expected
    counted = sum(count for key, count in issues.items() if key.startswith("meta.maintainers"))
    assert counted == (0 if expected is not None else 1)


def test_control_characters_are_removed_and_counted() -> None:
    row, issues = only_row(
        {"description": "bell\x07 and nul\x00 but\ttab", "homepage": ["https://x\x1b.example"]}
    )
    assert row["description"] == "bell and nul but\ttab"
    assert row["homepages"] == ["https://x.example"]
    assert issues["meta.description: control characters removed"] == 1
    assert issues["meta.homepage: control characters removed"] == 1


def test_a_10_mb_description_is_truncated_and_counted() -> None:
    huge = "word " * 2_000_000
    row, issues = only_row({"description": huge, "longDescription": huge})
    assert len(row["description"]) <= MAX_TEXT_CHARS
    assert huge.startswith(row["description"])
    assert issues[f"meta.description: longer than {MAX_TEXT_CHARS} characters, truncated"] == 1
    assert issues[f"meta.longDescription: longer than {MAX_TEXT_CHARS} characters, truncated"] == 1
    # The raw meta keeps everything; the text that reaches a model is bounded.
    assert len(json.loads(row["meta_json"])["description"]) == len(huge)
    text = embedding_text("pkg", None, row["description"], row["long_description"])
    assert len(text) <= MAX_EMBEDDING_TEXT_CHARS
    assert row["content_hash"] == content_hash(text, MODEL_ID, DIMENSIONS)


def test_a_thousand_licenses_are_cut_to_the_list_limit() -> None:
    licenses = [{"shortName": f"l{index}", "free": True} for index in range(1000)]
    row, issues = only_row({"license": licenses, "homepage": [f"h{i}" for i in range(1000)]})
    assert len(row["licenses"]) == MAX_LIST_ITEMS
    assert row["licenses"][-1]["short_name"] == f"l{MAX_LIST_ITEMS - 1}"
    assert issues[f"meta.license: more than {MAX_LIST_ITEMS} licenses, truncated"] == 1
    assert len(row["homepages"]) == MAX_LIST_ITEMS
    assert issues[f"meta.homepage: more than {MAX_LIST_ITEMS} items, truncated"] == 1


def test_deeply_nested_meta_is_kept_and_absurd_nesting_fails_clearly() -> None:
    nested: Any = "bottom"
    for _ in range(300):
        nested = {"down": [nested]}
    row, _ = only_row({"description": "deep", "extra": nested})
    assert row["description"] == "deep"
    assert json.loads(row["meta_json"])["extra"] == nested

    depth = 5000
    data = b'{"pkg": {"name": "pkg-1", "meta": {"x": ' + b"[" * depth + b"]" * depth + b"}}}"
    with pytest.raises(InvalidDumpError, match="levels deep"):
        normalize(data)


def test_meta_that_is_not_an_object() -> None:
    normalized = normalize(
        {"a": package("a-1", "a string"), "b": package("b-1", None) | {"meta": None}}
    )
    assert normalized.row_count == 2
    assert normalized.issues["meta: not an object, treated as empty"] == 2
    assert all(json.loads(row["meta_json"]) == {} for row in normalized.table.to_pylist())


def test_invalid_utf8_anywhere_is_replaced_and_counted() -> None:
    data = (
        b'{"caf\xe9": {"name": "caf\xe9-1", "meta": {"description": "cr\xe8me"}},'
        b' "ok": {"name": "ok-1", "meta": {"description": "fine"}}}'
    )
    normalized = normalize(data)
    rows = rows_of(normalized)
    assert set(rows) == {"caf\ufffd", "ok"}
    assert rows["caf\ufffd"]["description"] == "cr\ufffdme"
    assert normalized.issues[INVALID_UTF8_ISSUE] == 1

    only_in_meta = b'{"p": {"name": "p-1", "meta": {"description": "cr\xe8me"}}}'
    normalized = normalize(only_in_meta)
    assert normalized.table["description"].to_pylist() == ["cr\ufffdme"]
    assert normalized.issues[INVALID_UTF8_ISSUE] == 1


def test_duplicates_and_empty_attribute_paths() -> None:
    # JSON with a repeated key: the last record wins, one row.
    data = (
        b'{"dup": {"name": "dup-1", "meta": {"description": "first"}},'
        b' "dup": {"name": "dup-2", "meta": {"description": "second"}},'
        b' "": {"name": "nameless-1"}}'
    )
    normalized = normalize(data)
    assert normalized.table["attr_path"].to_pylist() == ["dup"]
    assert normalized.table["version"].to_pylist() == ["2"]
    # The first "dup" record and the empty path.
    assert normalized.issues["attr_path: empty or duplicate, package left out"] == 2


def test_a_missing_name_falls_back_to_the_attribute_path() -> None:
    normalized = normalize({"orphan": {"meta": {"description": "no name"}}})
    row = normalized.table.to_pylist()[0]
    assert (row["name"], row["pname"], row["version"]) == ("orphan", "orphan", "")
    assert (row["system"], row["output_name"], row["outputs"]) == (None, None, [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("python3.13-requests-2.34.2", ("python3.13-requests", "2.34.2")),
        ("libgtk-3-0-3.24.38", ("libgtk", "3-0-3.24.38")),
        ("nixos-artwork-wallpapers", ("nixos-artwork-wallpapers", "")),
        ("hello", ("hello", "")),
        ("hello-", ("hello-", "")),
        ("tinyfetch-unstable-2024-01-15", ("tinyfetch-unstable", "2024-01-15")),
        ("_at_scope_slash_x-1.2.3", ("_at_scope_slash_x", "1.2.3")),
        ("-1.0", ("", "1.0")),
        ("font-é-1", ("font", "é-1")),
        ("ab--1", ("ab", "-1")),
        ("Name-With-UPPER-2", ("Name-With-UPPER", "2")),
    ],
)
def test_split_derivation_name_examples(name: str, expected: tuple[str, str]) -> None:
    assert split_derivation_name(name) == expected


def test_split_derivation_name_matches_nix_parse_drv_name(tmp_path: Path) -> None:
    """The same names through the real builtins.parseDrvName."""
    nix_instantiate = shutil.which("nix-instantiate")
    if nix_instantiate is None:
        pytest.fail("nix-instantiate (Debian's nix-bin) is not installed; .ci/run installs it")
    names = [
        "python3.13-requests-2.34.2",
        "libgtk-3-0-3.24.38",
        "nixos-artwork-wallpapers",
        "hello",
        "hello-",
        "tinyfetch-unstable-2024-01-15",
        "_at_scope_slash_x-1.2.3",
        "-1.0",
        "font-é-1",
        "ab--1",
        "Name-With-UPPER-2",
        "xorg-server-21.1.8",
        "a-b-c",
        "gcc-wrapper-13.2.0",
        "r-ggplot2-3.5.1",
    ]
    result = subprocess.run(
        [
            nix_instantiate,
            "--eval",
            "--json",
            "--strict",
            "--readonly-mode",
            "--argstr",
            "names",
            json.dumps(names),
            "-E",
            "{ names }: map builtins.parseDrvName (builtins.fromJSON names)",
        ],
        env={"HOME": str(tmp_path), "NIX_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin"},
        capture_output=True,
        check=True,
        timeout=60,
    )
    parsed = json.loads(result.stdout)
    assert [split_derivation_name(name) for name in names] == [
        (entry["name"], entry["version"]) for entry in parsed
    ]


def test_a_common_channel_prefix_is_stripped() -> None:
    normalized = normalize(
        {
            "nixpkgs.hello": package("hello-1"),
            "nixpkgs.python313Packages.requests": package("python3.13-requests-2"),
        }
    )
    assert normalized.table["attr_path"].to_pylist() == ["hello", "python313Packages.requests"]
    assert normalized.stripped_channel_prefix == "nixpkgs"


def test_mixed_prefixes_are_kept() -> None:
    normalized = normalize(
        {"nixpkgs.hello": package("hello-1"), "python313Packages.requests": package("r-1")}
    )
    assert normalized.table["attr_path"].to_pylist() == [
        "nixpkgs.hello",
        "python313Packages.requests",
    ]
    assert normalized.stripped_channel_prefix is None


def test_common_channel_prefix() -> None:
    assert common_channel_prefix(["nixos-24.05.a", "nixos-24.05.b.c"]) == "nixos-24.05."
    assert common_channel_prefix(["nixos.a", "nixpkgs.b"]) is None
    assert common_channel_prefix(["nixpkgsfoo.a"]) is None
    assert common_channel_prefix([]) is None


@pytest.mark.parametrize(
    ("position", "root", "expected"),
    [
        (
            "/nix/store/8gsg9l44a12940d7qybbaiwiqkrvfz7x-source/pkgs/by-name/ri/ripgrep/package.nix:62",
            None,
            "pkgs/by-name/ri/ripgrep/package.nix:62",
        ),
        (
            "/tmp/w/nix-store/nix/store/9hi5kx4rqgwwpda0ll0vprjz3szfsalg-source/pkgs/a.nix:3",
            None,
            "pkgs/a.nix:3",
        ),
        ("/home/me/nixpkgs/pkgs/a.nix:3", "/home/me/nixpkgs", "pkgs/a.nix:3"),
        ("/home/me/nixpkgs/pkgs/a.nix:3", "/home/me/nixpkgs/", "pkgs/a.nix:3"),
        ("/elsewhere/a.nix:3", "/home/me/nixpkgs", "/elsewhere/a.nix:3"),
        ("/home/me/nixpkgs-other/a.nix:3", "/home/me/nixpkgs", "/home/me/nixpkgs-other/a.nix:3"),
        (None, "/x", None),
        ("", "/x", None),
    ],
)
def test_relative_position(position: str | None, root: str | None, expected: str | None) -> None:
    assert relative_position(position, root) == expected


def test_progress_is_reported() -> None:
    calls: list[tuple[int, int]] = []
    normalize(
        {f"p{i}": package(f"p{i}-1") for i in range(5)},
        progress=lambda done, total: calls.append((done, total)),
        progress_every=2,
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


@pytest.fixture
def sample(sample_listing: Path) -> tuple[dict[str, Any], NormalizedPackages]:
    data = sample_listing.read_bytes()
    return json.loads(data), normalize(data)


def test_the_sample_listing_row_count_and_unique_attr_paths(
    sample: tuple[dict[str, Any], NormalizedPackages],
) -> None:
    raw, normalized = sample
    attr_paths = normalized.table["attr_path"].to_pylist()
    assert normalized.row_count == len(raw) == 2008
    assert len(set(attr_paths)) == len(attr_paths)
    assert set(attr_paths) == set(raw)
    assert normalized.evaluation_failures == []
    assert normalized.input_shape == "nix-env"
    assert normalized.table["vector"].null_count == 2008


def test_the_sample_flags_match_the_listing(
    sample: tuple[dict[str, Any], NormalizedPackages],
) -> None:
    raw, normalized = sample
    rows = rows_of(normalized)
    for flag in (*FLAGS, "available"):
        expected = {path for path, record in raw.items() if record["meta"][flag]}
        assert {path for path, row in rows.items() if row[flag]} == expected, flag
    assert sum(row["broken"] for row in rows.values()) == 29


def test_the_sample_versions_positions_and_descriptions(
    sample: tuple[dict[str, Any], NormalizedPackages],
) -> None:
    raw, normalized = sample
    for row in normalized.table.to_pylist():
        record = raw[row["attr_path"]]
        assert (row["name"], row["pname"], row["version"]) == (
            record["name"],
            record["pname"],
            record["version"],
        )
        assert row["position"] is not None and not row["position"].startswith("/")
        assert row["outputs"] == sorted(record["outputs"])
        description = record["meta"].get("description")
        assert row["description"] == (description.strip() or None if description else None)
    assert normalized.issues == Counter()


def test_known_packages_of_the_sample(
    sample: tuple[dict[str, Any], NormalizedPackages],
) -> None:
    rows = rows_of(sample[1])
    fweb = rows["fweb"]
    assert [(lic["spdx_id"], lic["short_name"], lic["free"]) for lic in fweb["licenses"]] == [
        ("GPL-2.0-or-later", "gpl2Plus", True),
        ("MIT", "mit", True),
    ]
    assert fweb["main_program"] == "fweave"
    assert [m["github"] for m in fweb["maintainers"]] == ["dirson", "tsuchiya", "d4n1"]
    assert fweb["position"] == "pkgs/by-name/fw/fweb/package.nix:60"

    assert rows["fling"]["licenses"][0]["short_name"] == "unknown"
    assert rows["fling"]["licenses"][0]["spdx_id"] is None
    assert rows["fling"]["maintainers"][1] == {
        "name": "David Suárez",
        "email": "deiv@debian.org",
        "github": "deiv",
        "github_id": 28875977,
        "matrix": None,
    }

    fst = rows["fst-dev"]
    assert (fst["output_name"], fst["outputs"], fst["outputs_to_install"]) == (
        "bin",
        ["bin", "dev", "out"],
        ["bin"],
    )
    assert fst["teams"][0]["short_name"] == "Multimedia"
    assert fst["teams"][0]["github_teams"] == ["multimedia"]
    assert fst["teams"][0]["scope"] == "Maintain Multimedia packages and the tooling around them."
    assert [m["github_id"] for m in fst["teams"][0]["members"]] == [449504, 137640881]

    assert rows["gobject-introspection"]["homepages"] == [
        "https://wiki.gnome.org/GObjectIntrospection",
        "https://tracker.debian.org/pkg/gobject-introspection",
    ]
    assert (rows["electronics-cad-gui"]["pname"], rows["electronics-cad-gui"]["version"]) == (
        "electronics-cad-gui",
        "",
    )
    gpgconf = rows["gpgconf"]
    assert (gpgconf["insecure"], gpgconf["available"]) == (True, False)
    assert gpgconf["known_vulnerabilities"] == [
        "Upstream is unmaintained and has known, unpatched security issues"
    ]
    assert rows["curl"]["source_provenance"] == ["fromSource"]
    assert json.loads(rows["abi-monitor"]["meta_json"])["maintainers"][0]["keys"] == [
        {"fingerprint": "3888 F133 A3FE F0EB 9695 16DC B176 3072 B006 53DF"}
    ]
