"""The container entry point, run for real as a subprocess the way the image runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from fdnix_assets.settings import PROCESSING_MODES
from fdnix_assets_tests.conftest import REPO_ROOT, RUN_CONFIG_VARIABLES
from fdnix_assets_tests.samples import SMALL_LISTING_SIZE, write_small_listing

RUN_TIMEOUT_SECONDS = 180


def entrypoint_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in RUN_CONFIG_VARIABLES}
    env |= {
        "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
        "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
        "HF_HUB_OFFLINE": "1",
        "LANCEDB_LOG": "error",
    }
    return env | variables


def run_entrypoint(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdnix_assets.entrypoint", *arguments],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )


def summary_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("fdnix: run ")]
    assert len(lines) == 1, f"expected one summary line, got {lines!r} in:\n{output[-3000:]}"
    return lines[0]


def test_metadata_mode_runs_metadata_job_and_records_it_in_dagster_home(tmp_path: Path) -> None:
    listing = write_small_listing(tmp_path)
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        (REPO_ROOT / "dagster.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    env = entrypoint_env(
        tmp_path,
        PROCESSING_MODE="metadata",
        NIXPKGS_JSON=str(listing),
        DAGSTER_HOME=str(dagster_home),
    )

    completed = run_entrypoint(env)

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    line = summary_line(completed.stdout)
    assert " of metadata_job SUCCESS in " in line
    run_id = line.split()[2]

    table = lancedb.connect(str(tmp_path / "out" / "fdnix-data.lancedb")).open_table("packages")
    assert table.count_rows() == SMALL_LISTING_SIZE
    attr_paths = set(table.to_arrow().column("attr_path").to_pylist())
    assert attr_paths == set(json.loads(listing.read_text())), "rows differ from the input"

    # The run is in the instance DAGSTER_HOME names, so the UI on that home shows it.
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None, f"run {run_id} is not in {dagster_home}"
        assert run.job_name == "metadata_job"
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["fdnix/processing-mode"] == "metadata"


def test_failed_run_exits_non_zero_naming_the_step_and_error(tmp_path: Path) -> None:
    broken = tmp_path / "truncated.json"
    broken.write_text('{"hello": {"name": "hello-2.12", "pname": "hel', encoding="utf-8")
    env = entrypoint_env(tmp_path, PROCESSING_MODE="metadata", NIXPKGS_JSON=str(broken))

    completed = run_entrypoint(env)

    assert completed.returncode == 1, (completed.stdout + completed.stderr)[-3000:]
    line = summary_line(completed.stderr)
    assert " of metadata_job FAILURE in " in line
    assert "step nixpkgs_packages failed" in line
    assert str(broken) in line and "not valid JSON" in line
    assert not (tmp_path / "out" / "fdnix-data.lancedb").exists()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"PROCESSING_MODE": "everything"}, ["PROCESSING_MODE", "'everything'"]),
        (
            {"DUCKDB_KEY": "fdnix.duckdb"},
            ["DUCKDB_KEY", "LANCEDB_DATA_KEY", "LANCEDB_MINIFIED_KEY"],
        ),
        ({"BEDROCK_BATCH_SIZE": "lots"}, ["BEDROCK_BATCH_SIZE", "'lots'"]),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    tmp_path: Path, variables: dict[str, str], named: list[str]
) -> None:
    completed = run_entrypoint(entrypoint_env(tmp_path, **variables))

    assert completed.returncode == 2, completed.stdout + completed.stderr
    message = completed.stderr.strip()
    assert message.startswith("fdnix: configuration error:")
    for word in named:
        assert word in message
    assert not (tmp_path / "out").exists(), "no work may start on a bad configuration"


def test_check_names_the_job_each_mode_selects_without_running(tmp_path: Path) -> None:
    env = entrypoint_env(tmp_path, PROCESSING_MODE="full")
    completed = run_entrypoint(env, "--check")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == (
        f"fdnix: configuration is valid; PROCESSING_MODE=full runs {PROCESSING_MODES['full']}"
    )
    assert not (tmp_path / "out").exists()


def summary_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("fdnix: run ")]


def test_channels_run_one_after_the_other_into_their_own_datasets(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    write_small_listing(dumps).rename(dumps / "nixos-unstable.json")
    write_small_listing(dumps, size=30).rename(dumps / "nixos-25.11.json")
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    env = entrypoint_env(
        tmp_path,
        PROCESSING_MODE="metadata",
        FDNIX_CHANNELS="nixos-unstable,nixos-25.11",
        NIXPKGS_JSON=str(dumps / "{channel}.json"),
        DAGSTER_HOME=str(dagster_home),
    )

    checked = run_entrypoint(env, "--check")
    assert checked.stdout.strip() == (
        "fdnix: configuration is valid; PROCESSING_MODE=metadata runs metadata_job for "
        "channels nixos-unstable, nixos-25.11"
    )
    completed = run_entrypoint(env)

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    lines = summary_lines(completed.stdout)
    assert [line.split(" SUCCESS in ")[0].split(" of ")[1] for line in lines] == [
        "metadata_job for nixos-unstable",
        "metadata_job for nixos-25.11",
    ]
    assert "fdnix: 2 of 2 channels succeeded" in completed.stdout
    for channel, rows in (("nixos-unstable", SMALL_LISTING_SIZE), ("nixos-25.11", 30)):
        dataset = tmp_path / "out" / channel / "fdnix-data.lancedb"
        assert lancedb.connect(str(dataset)).open_table("packages").count_rows() == rows
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert sorted(run.tags["dagster/partition"] for run in runs) == [
            "nixos-25.11",
            "nixos-unstable",
        ]
        assert {run.status for run in runs} == {DagsterRunStatus.SUCCESS}


def test_a_failed_channel_does_not_stop_the_next_but_fails_the_exit_code(
    tmp_path: Path,
) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "nixos-unstable.json").write_text('{"hello": {"name": "hel', encoding="utf-8")
    write_small_listing(dumps, size=30).rename(dumps / "nixos-25.11.json")
    env = entrypoint_env(
        tmp_path,
        PROCESSING_MODE="metadata",
        FDNIX_CHANNELS="nixos-unstable,nixos-25.11",
        NIXPKGS_JSON=str(dumps / "{channel}.json"),
    )

    completed = run_entrypoint(env)

    assert completed.returncode == 1, (completed.stdout + completed.stderr)[-3000:]
    (failed,) = summary_lines(completed.stderr)
    assert " of metadata_job for nixos-unstable FAILURE in " in failed
    assert "not valid JSON" in failed
    (succeeded,) = summary_lines(completed.stdout)
    assert " of metadata_job for nixos-25.11 SUCCESS in " in succeeded
    assert "fdnix: 1 of 2 channels succeeded; failed: nixos-unstable" in completed.stderr
    assert (tmp_path / "out" / "nixos-25.11" / "fdnix-data.lancedb").exists()
    assert not (tmp_path / "out" / "nixos-unstable" / "fdnix-data.lancedb").exists()

    # FDNIX_CHANNEL runs just the one channel.
    only = run_entrypoint(env | {"FDNIX_CHANNEL": "nixos-25.11"})
    assert only.returncode == 0, (only.stdout + only.stderr)[-3000:]
    (line,) = summary_lines(only.stdout)
    assert " of metadata_job for nixos-25.11 SUCCESS in " in line
    assert "channels succeeded" not in only.stdout


class HangingHttpServer:
    """Accepts connections on 127.0.0.1 and never answers, so a download hangs."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(4)
        self.socket.settimeout(0.2)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}/nixpkgs.json"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self._connections.append(connection)
            self.connected.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for connection in self._connections:
            connection.close()
        self.socket.close()


@pytest.fixture
def hanging_server() -> Iterator[HangingHttpServer]:
    server = HangingHttpServer()
    yield server
    server.close()


def test_sigterm_stops_the_run_marks_it_failed_and_exits_130(
    tmp_path: Path, hanging_server: HangingHttpServer
) -> None:
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    env = entrypoint_env(
        tmp_path,
        PROCESSING_MODE="metadata",
        NIXPKGS_JSON=hanging_server.url,
        DAGSTER_HOME=str(dagster_home),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "fdnix_assets.entrypoint"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert hanging_server.connected.wait(timeout=120), "the run never reached the download"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, (stdout + stderr)[-3000:]
    line = summary_line(stderr)
    assert "FAILURE" in line and "interrupted" in line
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert [run.status for run in runs] == [DagsterRunStatus.FAILURE]
