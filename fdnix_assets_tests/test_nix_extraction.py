"""The real nix-env on the test package set in ``nixpkgs/``, and ready dumps via NIXPKGS_JSON.

Nothing here is mocked: nix-env (Debian's nix-bin, installed by .ci/run) evaluates the Nix
files, a thread of http.server serves downloads on 127.0.0.1, and S3 is the moto server.
Where a test needs nix-env to misbehave in ways the real one does not on demand (print nothing,
print truncated JSON, leave a child process behind), a small shell script stands in for it.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import brotli
import pytest
import zstandard

from fdnix_assets.nix.extract import (
    ExtractionError,
    Listing,
    fetch_dump,
    redact_url,
    run_nix_env,
    scrub_secrets,
)
from fdnix_assets.normalize import (
    INVALID_UTF8_ISSUE,
    InvalidDumpError,
    NormalizedPackages,
    normalize_listing,
)
from fdnix_assets_tests.conftest import TEST_NIXPKGS
from fdnix_assets_tests.samples import MIT_LICENSE_ROW, license_row

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384

EXPECTED_ATTR_PATHS = {
    "abandonware",
    "chatty",
    "coreutils",
    "descriptionless",
    "fancy-meta",
    "hello",
    "latin1-doc",
    "mmixware",
    "nixos-artwork-wallpapers",
    "nullable",
    "openssl_1_0",
    "proprietary-viewer",
    "python313Packages.numpy",
    "python313Packages.oldcrypto",
    "python313Packages.requests",
    "raw-drv",
    "ripgrep",
    "tinyfetch",
    "xlegacy",
}
EXPECTED_FAILURES = {"removed-tool", "needs-feature", "python313Packages.removedlib"}
# Refused by the set's check-meta unless the config allows them.
FLAGGED = {
    "abandonware",
    "openssl_1_0",
    "proprietary-viewer",
    "mmixware",
    "python313Packages.oldcrypto",
}

MIT = MIT_LICENSE_ROW
UNLICENSE = {
    "spdx_id": "Unlicense",
    "short_name": "unlicense",
    "full_name": "The Unlicense",
    "url": "https://spdx.org/licenses/Unlicense.html",
    "free": True,
    "redistributable": True,
    "deprecated": False,
}
GPL3_PLUS = {
    "spdx_id": "GPL-3.0-or-later",
    "short_name": "gpl3Plus",
    "full_name": "GNU General Public License v3.0 or later",
    "url": "https://spdx.org/licenses/GPL-3.0-or-later.html",
    "free": True,
    "redistributable": True,
    "deprecated": False,
}
UNFREE = {
    "spdx_id": None,
    "short_name": "unfree",
    "full_name": "Unfree",
    "url": None,
    "free": False,
    "redistributable": False,
    "deprecated": False,
}
ALICE = {
    "name": "Alice Müller",
    "email": "alice@example.org",
    "github": "alice-m",
    "github_id": 1000001,
    "matrix": "@alice:example.org",
}
BOB = {
    "name": "Bob Builder",
    "email": None,
    "github": "bob-b",
    "github_id": 1000002,
    "matrix": None,
}
CHEN = {
    "name": "陈静",
    "email": "chen@example.cn",
    "github": "chenjing",
    "github_id": 1000003,
    "matrix": None,
}
PYTHON_TEAM = {
    "short_name": "Python",
    "scope": "Maintain the Python interpreter and related packages.",
    "github_teams": ["python"],
    "members": [ALICE, CHEN],
}


def require_nix_env() -> str:
    executable = shutil.which("nix-env")
    if executable is None:
        pytest.fail(
            "nix-env is not installed, so the extraction cannot be tested for real: "
            "install Debian's nix-bin (apt-get install nix-bin; .ci/run and scripts/setup.sh do)"
        )
    return executable


def nix_environment(home: Path) -> dict[str, str]:
    """What nix-env needs to run as root without a daemon, kept out of the real home."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "NIX_STATE_DIR": str(home / "state"),
        "NIX_CONF_DIR": str(home),
    }


def line_of(path: Path, needle: str) -> int:
    """1-based line of the only line of ``path`` that contains ``needle``."""
    lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} should occur once in {path}, found {lines}"
    return lines[0]


class Evaluated:
    """The test set evaluated once by nix-env through the wrapper, and normalized."""

    def __init__(self, listing: Listing, normalized: NormalizedPackages, log: list[str]) -> None:
        self.listing = listing
        self.normalized = normalized
        self.log = log
        self.raw: dict[str, Any] = json.loads(listing.path.read_bytes().decode("utf-8", "replace"))
        self.rows = {row["attr_path"]: row for row in normalized.table.to_pylist()}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    require_nix_env()
    log: list[str] = []
    listing = run_nix_env(
        str(TEST_NIXPKGS), tmp_path_factory.mktemp("nix-eval"), timeout_seconds=120, log=log.append
    )
    normalized = normalize_listing(
        listing.read_bytes(),
        model_id=MODEL_ID,
        dimensions=DIMENSIONS,
        nixpkgs_root=listing.nixpkgs_root,
    )
    return Evaluated(listing, normalized, log)


def test_every_package_is_listed_once_without_channel_prefix(evaluated: Evaluated) -> None:
    assert set(evaluated.rows) == EXPECTED_ATTR_PATHS
    assert evaluated.normalized.row_count == len(EXPECTED_ATTR_PATHS)
    assert evaluated.normalized.stripped_channel_prefix is None
    assert evaluated.listing.source == str(TEST_NIXPKGS)
    assert evaluated.listing.source_kind == "nix-env"
    assert evaluated.listing.nixpkgs_root == str(TEST_NIXPKGS)


def test_broken_unfree_insecure_and_unsupported_packages_appear(evaluated: Evaluated) -> None:
    rows = evaluated.rows
    assert set(rows) >= FLAGGED
    assert rows["abandonware"]["broken"] is True
    assert rows["python313Packages.oldcrypto"]["broken"] is True
    assert rows["openssl_1_0"]["insecure"] is True
    assert rows["openssl_1_0"]["known_vulnerabilities"] == [
        "OpenSSL 1.0.2 is end of life",
        "CVE-2020-1971",
    ]
    assert rows["proprietary-viewer"]["unfree"] is True
    assert rows["proprietary-viewer"]["licenses"] == [UNFREE]
    assert rows["mmixware"]["unsupported"] is True
    assert rows["mmixware"]["platforms"] == ["mmix-mmixware"]
    for attr_path in FLAGGED:
        # nixpkgs says available=true under the wrapper's allow-everything config; the
        # dataset means "installable with nixpkgs' default config".
        assert evaluated.raw[attr_path]["meta"]["available"] is True
        assert rows[attr_path]["available"] is False, attr_path
    healthy = rows["hello"]
    assert (healthy["broken"], healthy["insecure"], healthy["unfree"]) == (False, False, False)
    assert (healthy["unsupported"], healthy["available"]) == (False, True)


def test_flags_are_derived_when_meta_does_not_carry_them(evaluated: Evaluated) -> None:
    raw_meta = evaluated.raw["raw-drv"]["meta"]
    assert "insecure" not in raw_meta and "unfree" not in raw_meta
    row = evaluated.rows["raw-drv"]
    assert (row["insecure"], row["unfree"], row["available"]) == (True, True, False)
    assert row["known_vulnerabilities"] == ["CVE-2023-0001"]
    assert row["position"] is None


def test_without_the_wrapper_nix_env_hides_flagged_packages_and_lists_aliases(
    tmp_path: Path,
) -> None:
    """The test set behaves like nixpkgs: the default config refuses, aliases are there."""
    executable = require_nix_env()
    result = subprocess.run(
        [executable, "-qaP", "--json", "-f", str(TEST_NIXPKGS), "--readonly-mode"],
        env=nix_environment(tmp_path / "home"),
        capture_output=True,
        timeout=120,
        check=True,
    )
    listed = set(json.loads(result.stdout))
    assert listed.isdisjoint(FLAGGED | EXPECTED_FAILURES)
    assert {"hello", "python313Packages.requests"} <= listed
    # nix-env lists one value once, under the first name it meets: here the alias.
    assert "rg" in listed and "ripgrep" not in listed


def test_without_the_wrapper_a_throwing_meta_field_truncates_the_json(tmp_path: Path) -> None:
    """Why the wrapper exists: nix-env exits 0 with invalid JSON when one meta field throws."""
    executable = require_nix_env()
    result = subprocess.run(
        [executable, "-qaP", "--json", "--meta", "-f", str(TEST_NIXPKGS), "--readonly-mode"],
        env=nix_environment(tmp_path / "home"),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout.decode("utf-8", "replace"))


def test_failed_packages_are_reported_by_attr_path(evaluated: Evaluated) -> None:
    assert set(evaluated.normalized.evaluation_failures) == EXPECTED_FAILURES
    assert len(evaluated.normalized.evaluation_failures) == len(EXPECTED_FAILURES)
    assert EXPECTED_FAILURES.isdisjoint(evaluated.rows)


def test_sets_without_recurse_for_derivations_and_aliases_are_not_listed(
    evaluated: Evaluated,
) -> None:
    listed = set(evaluated.raw)
    for hidden in (
        "nodeHidden.left-pad",
        "fontsDisabled.comic-neue",
        "python313Packages.internals.bootstrap-pip",
        "hello-legacy",
        "rg",
        "python3Packages.requests",
    ):
        assert hidden not in listed


def test_pname_and_version_come_from_the_derivation_not_the_split_name(
    evaluated: Evaluated,
) -> None:
    raw = evaluated.raw["python313Packages.requests"]
    # nix-env's own split of the name, which is wrong for Python packages:
    assert (raw["name"], raw["pname"], raw["version"]) == (
        "python3.13-requests-2.32.3",
        "python3.13-requests",
        "2.32.3",
    )
    row = evaluated.rows["python313Packages.requests"]
    assert (row["name"], row["pname"], row["version"]) == (
        "python3.13-requests-2.32.3",
        "requests",
        "2.32.3",
    )
    assert (evaluated.raw["tinyfetch"]["pname"], evaluated.raw["tinyfetch"]["version"]) == (
        "tinyfetch-unstable",
        "2024-01-15",
    )
    tinyfetch = evaluated.rows["tinyfetch"]
    assert (tinyfetch["pname"], tinyfetch["version"]) == ("tinyfetch", "unstable-2024-01-15")
    assert evaluated.rows["openssl_1_0"]["pname"] == "openssl"


def test_a_name_without_version_keeps_an_empty_version(evaluated: Evaluated) -> None:
    row = evaluated.rows["nixos-artwork-wallpapers"]
    assert (row["name"], row["pname"], row["version"]) == (
        "nixos-artwork-wallpapers",
        "nixos-artwork-wallpapers",
        "",
    )


def test_licenses_in_every_shape(evaluated: Evaluated) -> None:
    rows = evaluated.rows
    assert rows["hello"]["licenses"] == [GPL3_PLUS]
    assert rows["ripgrep"]["licenses"] == [MIT, UNLICENSE]
    assert rows["xlegacy"]["licenses"] == [license_row(short_name="GPL")]
    assert rows["nixos-artwork-wallpapers"]["licenses"] == []


def test_homepages_maintainers_teams_and_main_program(evaluated: Evaluated) -> None:
    rows = evaluated.rows
    assert rows["hello"]["homepages"] == ["https://www.gnu.org/software/hello/manual/"]
    assert rows["ripgrep"]["homepages"] == [
        "https://github.com/BurntSushi/ripgrep",
        "https://burntsushi.net/ripgrep/",
    ]
    assert rows["hello"]["maintainers"] == [ALICE, CHEN]
    assert rows["python313Packages.requests"]["maintainers"] == [BOB]
    assert rows["python313Packages.requests"]["teams"] == [PYTHON_TEAM]
    assert rows["python313Packages.numpy"]["teams"] == [PYTHON_TEAM]
    assert rows["ripgrep"]["main_program"] == "rg"
    assert rows["hello"]["main_program"] == "hello"
    assert rows["python313Packages.requests"]["changelog"] == (
        "https://github.com/psf/requests/blob/v2.32.3/HISTORY.md"
    )
    # The keys stay in the raw meta, which keeps everything.
    hello_meta = json.loads(rows["hello"]["meta_json"])
    assert hello_meta["maintainers"][0]["keys"] == [
        {"fingerprint": "ABCD 1234 EF56 7890 ABCD  1234 EF56 7890 ABCD 1234"}
    ]
    assert "_fdnix" not in hello_meta


def test_a_null_inside_a_maintainer_does_not_cost_the_whole_list(evaluated: Evaluated) -> None:
    assert evaluated.rows["chatty"]["maintainers"] == [
        {"name": "Dave", "email": None, "github": "dave", "github_id": 1000004, "matrix": None}
    ]


def test_unicode_text_survives(evaluated: Evaluated) -> None:
    assert evaluated.rows["hello"]["long_description"] == (
        "GNU Hello greets you in your language: Grüezi from Zürich, こんにちは from Tokyo,\n"
        "你好 from Beijing, and 👋 everywhere else."
    )
    assert evaluated.rows["hello"]["maintainers"][1]["name"] == "陈静"


def test_invalid_utf8_and_control_characters_from_nix_strings(evaluated: Evaluated) -> None:
    assert evaluated.rows["latin1-doc"]["description"] == (
        "Caf\ufffd cr\ufffdme br\ufffdl\ufffde recipes, written in Latin-1"
    )
    issues = evaluated.normalized.issues
    assert issues[INVALID_UTF8_ISSUE] == 1
    assert issues["meta.description: control characters removed"] == 1


def test_multiple_outputs_with_bin_first(evaluated: Evaluated) -> None:
    row = evaluated.rows["coreutils"]
    assert row["output_name"] == "bin"
    assert row["outputs"] == ["bin", "info", "man", "out"]
    assert row["outputs_to_install"] == ["bin", "man"]
    assert evaluated.rows["python313Packages.numpy"]["outputs"] == ["dist", "out"]


def test_a_throwing_meta_field_is_recorded_and_the_rest_kept(evaluated: Evaluated) -> None:
    assert evaluated.normalized.invalid_meta == {
        "descriptionless": ["description"],
        "fancy-meta": ["relatedPackage", "updateWith"],
    }
    row = evaluated.rows["descriptionless"]
    assert row["description"] is None
    assert row["homepages"] == ["https://example.org/descriptionless"]
    assert row["licenses"] == [MIT]
    fancy = evaluated.rows["fancy-meta"]
    assert fancy["description"] == "Package whose meta holds a function and a derivation"
    assert set(json.loads(fancy["meta_json"])).isdisjoint({"updateWith", "relatedPackage"})


def test_stderr_is_captured_and_logged(evaluated: Evaluated) -> None:
    stderr = evaluated.listing.stderr_lines
    assert "trace: chatty: evaluating my description" in stderr
    assert "derivation 'nullable-0.1' has invalid meta attribute 'homepage'" in stderr
    assert evaluated.listing.invalid_meta_attributes == {"homepage": 1}
    assert "nix-env: trace: chatty: evaluating my description" in evaluated.log
    assert evaluated.normalized.issues["meta.homepage: null"] == 1
    assert evaluated.rows["nullable"]["homepages"] == []


def test_positions_are_relative_to_the_nixpkgs_root(evaluated: Evaluated) -> None:
    top_level = TEST_NIXPKGS / "pkgs" / "top-level.nix"
    python = TEST_NIXPKGS / "pkgs" / "python-packages.nix"
    assert evaluated.raw["hello"]["meta"]["position"].startswith(str(TEST_NIXPKGS) + "/")
    hello_line = line_of(top_level, '"Program that produces a familiar')
    assert evaluated.rows["hello"]["position"] == f"pkgs/top-level.nix:{hello_line}"
    requests_line = line_of(python, '"HTTP library for Python"')
    assert evaluated.rows["python313Packages.requests"]["position"] == (
        f"pkgs/python-packages.nix:{requests_line}"
    )
    wallpapers_line = line_of(top_level, 'meta.description = "Wallpapers from')
    assert evaluated.rows["nixos-artwork-wallpapers"]["position"] == (
        f"pkgs/top-level.nix:{wallpapers_line}"
    )


def test_every_row_has_a_content_hash_and_no_vector(evaluated: Evaluated) -> None:
    table = evaluated.normalized.table
    hashes = table["content_hash"].to_pylist()
    assert all(len(value) == 64 for value in hashes)
    assert len(set(hashes)) == len(hashes)
    assert table["vector"].null_count == table.num_rows


def test_a_file_inside_nixpkgs_as_nixpkgs(tmp_path: Path) -> None:
    """NIXPKGS may name default.nix itself; the root is then its directory."""
    require_nix_env()
    listing = run_nix_env(str(TEST_NIXPKGS / "default.nix"), tmp_path, log=lambda _: None)
    assert listing.nixpkgs_root == str(TEST_NIXPKGS)
    assert len(json.loads(listing.path.read_bytes().decode("utf-8", "replace"))) == len(
        EXPECTED_ATTR_PATHS
    ) + len(EXPECTED_FAILURES)


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    authorizations: list[str | None]

    def do_GET(self) -> None:
        self.authorizations.append(self.headers.get("Authorization"))
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path, list[str | None]]]:
    """A directory served over HTTP on 127.0.0.1; yields (base URL, directory, auth headers)."""
    root = tmp_path / "served"
    root.mkdir()
    authorizations: list[str | None] = []
    handler = type(
        "Handler",
        (_RecordingHandler,),
        {"authorizations": authorizations, "__init__": _handler_init(root)},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, authorizations
    finally:
        server.shutdown()
        server.server_close()


def _handler_init(root: Path) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        http.server.SimpleHTTPRequestHandler.__init__(self, *args, directory=str(root), **kwargs)

    return __init__


def test_a_channel_tarball_url_is_fetched_into_a_private_store(
    tmp_path: Path, http_root: tuple[str, Path, list[str | None]]
) -> None:
    require_nix_env()
    base, root, _ = http_root
    with tarfile.open(root / "nixexprs.tar.gz", "w:gz") as archive:
        archive.add(TEST_NIXPKGS, arcname="nixpkgs-test")
    log: list[str] = []
    url = f"{base}/nixexprs.tar.gz"
    listing = run_nix_env(url, tmp_path / "work", timeout_seconds=120, log=log.append)
    normalized = normalize_listing(
        listing.read_bytes(), model_id=MODEL_ID, dimensions=DIMENSIONS, nixpkgs_root=None
    )
    rows = {row["attr_path"]: row for row in normalized.table.to_pylist()}
    assert set(rows) == EXPECTED_ATTR_PATHS
    raw_position = json.loads(listing.path.read_bytes().decode("utf-8", "replace"))["hello"][
        "meta"
    ]["position"]
    assert "/nix/store/" in raw_position
    hello_line = line_of(TEST_NIXPKGS / "pkgs" / "top-level.nix", '"Program that produces')
    assert rows["hello"]["position"] == f"pkgs/top-level.nix:{hello_line}"
    assert listing.source == url


def test_credentials_in_a_nixpkgs_url_never_show(
    tmp_path: Path, http_root: tuple[str, Path, list[str | None]]
) -> None:
    require_nix_env()
    base, _, _ = http_root
    host = base.removeprefix("http://")
    url = f"http://builder:hunter2secret@{host}/missing.tar.gz?access_token=tok3nvalue"
    log: list[str] = []
    with pytest.raises(ExtractionError) as raised:
        run_nix_env(url, tmp_path / "work", timeout_seconds=120, log=log.append)
    message = str(raised.value)
    assert "exited 1" in message
    assert "404" in message
    for secret in ("hunter2secret", "tok3nvalue", "builder:"):
        assert secret not in message
        assert not any(secret in line for line in log)


def test_missing_nix_env_executable(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError) as raised:
        run_nix_env(str(TEST_NIXPKGS), tmp_path, nix_env="definitely-not-nix-env")
    message = str(raised.value)
    assert "'definitely-not-nix-env' was not found on PATH" in message
    assert "NIXPKGS_JSON" in message and "nix-bin" in message


def test_missing_nixpkgs_path(tmp_path: Path) -> None:
    require_nix_env()
    with pytest.raises(ExtractionError, match=r"NIXPKGS='/does/not/exist': no such file"):
        run_nix_env("/does/not/exist", tmp_path / "work")


def write_set(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.nix").write_text(body)
    return directory


def test_an_aborting_evaluation_fails_with_its_message(tmp_path: Path) -> None:
    require_nix_env()
    nixpkgs = write_set(
        tmp_path / "aborts",
        '{ config ? {}, system ? "" }: { hello = abort "this nixpkgs needs a newer Nix"; }\n',
    )
    log: list[str] = []
    with pytest.raises(ExtractionError) as raised:
        run_nix_env(str(nixpkgs), tmp_path / "work", log=log.append)
    message = str(raised.value)
    assert f"nix-env exited 1 while evaluating {nixpkgs}" in message
    assert "this nixpkgs needs a newer Nix" in message
    assert any("this nixpkgs needs a newer Nix" in line for line in log)


def test_a_syntax_error_fails_with_the_file_and_line(tmp_path: Path) -> None:
    require_nix_env()
    nixpkgs = write_set(tmp_path / "syntax", "{ config ? {} }: {\n  hello = ;\n}\n")
    with pytest.raises(ExtractionError) as raised:
        run_nix_env(str(nixpkgs), tmp_path / "work", log=lambda _: None)
    message = str(raised.value)
    assert "exited 1" in message
    assert "syntax error" in message
    assert str(nixpkgs / "default.nix") in message


def test_an_unset_nix_path_for_angle_bracket_nixpkgs_says_what_to_set(tmp_path: Path) -> None:
    require_nix_env()
    with pytest.raises(ExtractionError) as raised:
        run_nix_env("<nixpkgs>", tmp_path / "work", log=lambda _: None, extra_env={"NIX_PATH": ""})
    message = str(raised.value)
    assert "was not found in the Nix search path" in message
    assert "NIX_PATH" in message and "set NIXPKGS" in message


def test_an_empty_package_set_is_an_invalid_listing(tmp_path: Path) -> None:
    require_nix_env()
    nixpkgs = write_set(tmp_path / "empty", "{ config ? {} }: { }\n")
    listing = run_nix_env(str(nixpkgs), tmp_path / "work", log=lambda _: None)
    assert listing.read_bytes().strip() == b"{}"
    with pytest.raises(InvalidDumpError, match="holds no packages"):
        normalize_listing(listing.read_bytes(), model_id=MODEL_ID, dimensions=DIMENSIONS)


def _live(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for a parent that will not reap it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_until_dead(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := [pid for pid in pids if _live(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if text in command_line and _live(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def test_a_slow_evaluation_times_out_and_nix_env_is_killed(tmp_path: Path) -> None:
    require_nix_env()
    # About 10^10 additions in constant memory: it would run for hours.
    nixpkgs = write_set(
        tmp_path / "slow",
        "{ config ? {} }:\n"
        "let range = builtins.genList (x: x) 100000;\n"
        "    sum = f: builtins.foldl' (acc: i: acc + f i) 0 range;\n"
        "in { forever = sum (i: sum (j: 1)); }\n",
    )
    work = tmp_path / "work"
    with pytest.raises(ExtractionError) as raised:
        run_nix_env(str(nixpkgs), work, timeout_seconds=1.5, log=lambda _: None)
    assert f"did not finish evaluating {nixpkgs} within 1.5 s" in str(raised.value)
    # nix-env ignores SIGTERM while it evaluates; only the SIGKILL of its group stops it.
    assert _wait_until_dead(_processes_mentioning(str(nixpkgs))) == []


def fake_nix_env(directory: Path, script: str) -> Path:
    """An executable shell script that stands in for nix-env."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fake-nix-env"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    script = fake_nix_env(
        tmp_path / "bin",
        'sleep 300 &\necho "$$ $!" > "$PID_FILE"\nwait\n',
    )
    with pytest.raises(ExtractionError, match="did not finish"):
        run_nix_env(
            str(TEST_NIXPKGS),
            tmp_path / "work",
            nix_env=str(script),
            timeout_seconds=1,
            log=lambda _: None,
            extra_env={"PID_FILE": str(pid_file)},
        )
    pids = [int(pid) for pid in pid_file.read_text().split()]
    assert len(pids) == 2
    assert _wait_until_dead(pids) == []


def test_exit_zero_with_no_output_is_an_error(tmp_path: Path) -> None:
    script = fake_nix_env(tmp_path / "bin", 'echo "warning: nothing to evaluate" >&2\nexit 0\n')
    with pytest.raises(ExtractionError) as raised:
        run_nix_env(str(TEST_NIXPKGS), tmp_path / "work", nix_env=str(script), log=lambda _: None)
    message = str(raised.value)
    assert "nix-env printed nothing" in message
    assert "warning: nothing to evaluate" in message


def test_death_by_signal_is_reported(tmp_path: Path) -> None:
    script = fake_nix_env(tmp_path / "bin", "kill -9 $$\n")
    with pytest.raises(ExtractionError, match="was killed by signal 9"):
        run_nix_env(str(TEST_NIXPKGS), tmp_path / "work", nix_env=str(script), log=lambda _: None)


def test_truncated_json_with_exit_zero_fails_normalization_clearly(tmp_path: Path) -> None:
    script = fake_nix_env(
        tmp_path / "bin",
        """printf '{\\n  "hello": {\\n    "name": "hello-2.12.1",\\n    "meta": {\\n'\nexit 0\n""",
    )
    listing = run_nix_env(
        str(TEST_NIXPKGS), tmp_path / "work", nix_env=str(script), log=lambda _: None
    )
    with pytest.raises(InvalidDumpError) as raised:
        normalize_listing(listing.read_bytes(), model_id=MODEL_ID, dimensions=DIMENSIONS)
    message = str(raised.value)
    assert "not valid JSON" in message
    assert "truncated nix-env output" in message


def small_listing(sample_listing: Path, count: int = 25) -> dict[str, Any]:
    packages = json.loads(sample_listing.read_bytes())
    return dict(list(packages.items())[:count])


def attr_paths_and_hashes(data: bytes) -> list[tuple[str, str]]:
    table = normalize_listing(data, model_id=MODEL_ID, dimensions=DIMENSIONS).table
    return list(zip(table["attr_path"].to_pylist(), table["content_hash"].to_pylist(), strict=True))


@pytest.fixture
def listing_bytes(sample_listing: Path) -> bytes:
    return json.dumps(small_listing(sample_listing), ensure_ascii=False).encode()


COMPRESSORS = {
    "json": lambda data: data,
    "json.zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "json.gz": gzip.compress,
    "json.br": brotli.compress,
}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_a_dump_file_in_every_compression(
    tmp_path: Path, listing_bytes: bytes, suffix: str
) -> None:
    source = tmp_path / f"packages.{suffix}"
    source.write_bytes(COMPRESSORS[suffix](listing_bytes))
    listing = fetch_dump(str(source), tmp_path / "work", log=lambda _: None)
    assert listing.read_bytes() == listing_bytes
    assert listing.source_kind == "dump"
    assert listing.source == str(source)
    assert len(attr_paths_and_hashes(listing.read_bytes())) == 25


def test_compression_is_recognised_by_content_whatever_the_name(
    tmp_path: Path, listing_bytes: bytes
) -> None:
    for name, data in (
        ("zstd.json", zstandard.ZstdCompressor().compress(listing_bytes)),
        ("gzip.json", gzip.compress(listing_bytes)),
    ):
        (tmp_path / name).write_bytes(data)
        listing = fetch_dump(str(tmp_path / name), tmp_path / f"work-{name}", log=lambda _: None)
        assert listing.read_bytes() == listing_bytes


def test_a_file_url_is_a_local_file(tmp_path: Path, listing_bytes: bytes) -> None:
    (tmp_path / "p.json").write_bytes(listing_bytes)
    listing = fetch_dump(f"file://{tmp_path / 'p.json'}", tmp_path / "work", log=lambda _: None)
    assert listing.read_bytes() == listing_bytes


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.json.gz", b"\x1f\x8b\x08\x00garbage", "could not be decompressed"),
        ("broken.json.zst", b"\x28\xb5\x2f\xfdgarbage", "could not be decompressed"),
        ("cut.json.br", None, "could not be decompressed"),
        ("empty.json", b"", "the file is empty"),
    ],
)
def test_damaged_dump_files(
    tmp_path: Path, listing_bytes: bytes, name: str, content: bytes | None, expected: str
) -> None:
    if content is None:
        content = brotli.compress(listing_bytes)[:-20]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ExtractionError) as raised:
        fetch_dump(str(tmp_path / name), tmp_path / "work", log=lambda _: None)
    assert expected in str(raised.value)
    assert f"NIXPKGS_JSON={tmp_path / name}" in str(raised.value)


def test_a_missing_dump_file(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="no such file"):
        fetch_dump(str(tmp_path / "nope.json"), tmp_path / "work", log=lambda _: None)


def test_a_dump_over_http(
    tmp_path: Path, listing_bytes: bytes, http_root: tuple[str, Path, list[str | None]]
) -> None:
    base, root, authorizations = http_root
    (root / "packages.json.zst").write_bytes(zstandard.ZstdCompressor().compress(listing_bytes))
    (root / "packages.json").write_bytes(listing_bytes)
    for name in ("packages.json.zst", "packages.json"):
        work = tmp_path / f"work-{name}"
        listing = fetch_dump(f"{base}/{name}", work, log=lambda _: None)
        assert listing.read_bytes() == listing_bytes
        assert list(work.iterdir()) == [listing.path]
    assert authorizations == [None, None]


def test_http_credentials_are_sent_as_basic_auth_and_never_shown(
    tmp_path: Path, listing_bytes: bytes, http_root: tuple[str, Path, list[str | None]]
) -> None:
    base, root, authorizations = http_root
    (root / "packages.json.br").write_bytes(brotli.compress(listing_bytes))
    host = base.removeprefix("http://")
    url = f"http://indexer:s%40cret-pass@{host}/packages.json.br?X-Amz-Signature=sig12345"
    log: list[str] = []
    listing = fetch_dump(url, tmp_path / "work", log=log.append)
    assert listing.read_bytes() == listing_bytes
    assert authorizations == ["Basic " + base64.b64encode(b"indexer:s@cret-pass").decode()]
    assert listing.source == f"{base}/packages.json.br"
    assert not any("cret" in line or "sig12345" in line for line in log)

    missing = url.replace("packages.json.br", "missing.json")
    with pytest.raises(ExtractionError) as raised:
        fetch_dump(missing, tmp_path / "work2", log=log.append)
    message = str(raised.value)
    assert "HTTP Error 404" in message
    assert f"NIXPKGS_JSON={base}/missing.json" in message
    for secret in ("cret", "sig12345", "indexer"):
        assert secret not in message


def test_a_dump_from_s3(tmp_path: Path, listing_bytes: bytes, s3_bucket: str, aws_env: str) -> None:
    client = boto3.client("s3")
    client.put_object(
        Bucket=s3_bucket, Key="dumps/packages.json.gz", Body=gzip.compress(listing_bytes)
    )
    listing = fetch_dump(
        f"s3://{s3_bucket}/dumps/packages.json.gz",
        tmp_path / "work",
        s3_client_factory=lambda: boto3.client("s3"),
        log=lambda _: None,
    )
    assert listing.read_bytes() == listing_bytes
    assert listing.source == f"s3://{s3_bucket}/dumps/packages.json.gz"
    assert list((tmp_path / "work").iterdir()) == [listing.path]

    with pytest.raises(ExtractionError) as raised:
        fetch_dump(
            f"s3://{s3_bucket}/dumps/missing.json",
            tmp_path / "work",
            s3_client_factory=lambda: boto3.client("s3"),
            log=lambda _: None,
        )
    assert f"NIXPKGS_JSON=s3://{s3_bucket}/dumps/missing.json: could not be read" in str(
        raised.value
    )
    assert "404" in str(raised.value)


def test_s3_urls_need_a_client_and_a_key(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="no S3 client is configured"):
        fetch_dump("s3://bucket/key.json", tmp_path, log=lambda _: None)
    with pytest.raises(ExtractionError, match="expected s3://bucket/key"):
        fetch_dump("s3://bucket", tmp_path, s3_client_factory=lambda: None, log=lambda _: None)


def test_a_channel_packages_json_version_2(tmp_path: Path, sample_listing: Path) -> None:
    packages = small_listing(sample_listing, 10)
    (tmp_path / "packages.json.br").write_bytes(
        brotli.compress(json.dumps({"version": 2, "packages": packages}).encode())
    )
    listing = fetch_dump(str(tmp_path / "packages.json.br"), tmp_path / "work", log=lambda _: None)
    normalized = normalize_listing(listing.read_bytes(), model_id=MODEL_ID, dimensions=DIMENSIONS)
    assert normalized.input_shape == "packages.json"
    assert normalized.table["attr_path"].to_pylist() == list(packages)
    plain = normalize_listing(
        json.dumps(packages).encode(), model_id=MODEL_ID, dimensions=DIMENSIONS
    )
    assert plain.input_shape == "nix-env"
    assert normalized.table.equals(plain.table)


def test_an_unsupported_packages_json_version(sample_listing: Path) -> None:
    data = json.dumps({"version": 1, "packages": small_listing(sample_listing, 2)}).encode()
    with pytest.raises(InvalidDumpError, match=r"packages\.json version 1 is not supported"):
        normalize_listing(data, model_id=MODEL_ID, dimensions=DIMENSIONS)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"hello": {"name": "hello-1"', "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object: it starts with b'[1, 2, 3]'"),
        (b"   ", "empty (no bytes at all)"),
        (b'{"hello": "hello-1.0"}', "neither the nix-env shape"),
    ],
)
def test_input_that_is_not_a_listing(data: bytes, expected: str) -> None:
    with pytest.raises(InvalidDumpError) as raised:
        normalize_listing(data, model_id=MODEL_ID, dimensions=DIMENSIONS)
    assert expected in str(raised.value)


def test_redaction_of_urls_and_messages() -> None:
    assert redact_url("https://user:pw@example.org:8443/a/b.json?sig=1#frag") == (
        "https://example.org:8443/a/b.json"
    )
    assert redact_url("s3://bucket/key.json") == "s3://bucket/key.json"
    assert redact_url("/local/path?.json") == "/local/path?.json"
    source = "https://user:pw%21x@example.org/a.json?token=abc%2Fdef"
    message = (
        "failed for https://user:pw%21x@example.org/a.json?token=abc%2Fdef: host "
        "'user:pw!x@example.org' said no (token=abc/def)"
    )
    scrubbed = scrub_secrets(message, source)
    assert "pw" not in scrubbed and "abc" not in scrubbed
    assert "https://example.org/a.json" in scrubbed
