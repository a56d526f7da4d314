"""The compose deployment without Docker: the same processes, commands and instance.

docker/docker-compose.yml runs PostgreSQL, the user-code server, the webserver and the
daemon. No container engine runs here, so this test starts each of them as a local
process instead: PostgreSQL from Debian's packages, and the three Dagster services with
the exact commands and healthchecks the compose file gives them (only hosts, ports and
paths are moved to 127.0.0.1 and a temporary directory), on docker/dagster.yaml. It then
queues two runs that write the same dataset through the GraphQL API and checks that the
daemon ran them one after the other (the "fdnix_datasets" pool), both successfully, with
their history in PostgreSQL.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from dagster import DagsterInstance, DagsterRunStatus

from fdnix_assets_tests.conftest import free_port
from fdnix_assets_tests.samples import write_small_listing
from fdnix_assets_tests.test_container import COMPOSE_FILE, DEPLOY_INSTANCE, DEPLOY_WORKSPACE

pytestmark = pytest.mark.slow

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES_USER = "dagster"
POSTGRES_DB = "dagster"
SERVICE_TIMEOUT_SECONDS = 180
RUN_TIMEOUT_SECONDS = 300
# Longer than the dequeue interval in docker/dagster.yaml (5 s).
LISTING_DELAY_SECONDS = 10
VENV_BIN = Path(sys.executable).parent

LAUNCH_RUN = """
mutation FdnixLaunch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)


def _wait_until(check: Callable[[], bool], what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + SERVICE_TIMEOUT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"{what} not ready in time:\n{log()}"
        time.sleep(1)


@dataclass(frozen=True)
class Postgres:
    port: int

    @property
    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": POSTGRES_USER,
            "DAGSTER_POSTGRES_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_POSTGRES_DB": POSTGRES_DB,
        }


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    assert (POSTGRES_BIN / "postgres").is_file(), (
        f"{POSTGRES_BIN}/postgres is missing: apt-get install postgresql-15"
    )
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    data_root = Path(tempfile.mkdtemp(prefix="fdnix-postgres-"))
    data = data_root / "data"
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(data_root, account.pw_uid, account.pw_gid)
    port = free_port()
    subprocess.run(
        _as_postgres_user(
            [
                *(str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", POSTGRES_USER),
                *("-A", "trust", "--no-sync", "--no-instructions"),
            ]
        ),
        check=True,
        capture_output=True,
    )
    log_path = data_root / "postgres.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _as_postgres_user(
                [
                    *(str(POSTGRES_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1"),
                    *("-p", str(port), "-k", str(data_root), "-c", "fsync=off"),
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The compose healthcheck, as the postgres container would run it.
        healthcheck = compose_service("postgres")["healthcheck"]["test"]
        assert healthcheck[0] == "CMD-SHELL"
        env = os.environ | {
            "POSTGRES_USER": POSTGRES_USER,
            "POSTGRES_DB": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
        }

        def healthy() -> bool:
            shell = healthcheck[1].replace("$$", "$")
            return subprocess.run(["sh", "-c", shell], env=env, capture_output=True).returncode == 0

        _wait_until(healthy, "PostgreSQL", lambda: log_path.read_text(errors="replace"))
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER, POSTGRES_DB],
            check=True,
            capture_output=True,
        )
        yield Postgres(port=port)
    finally:
        _stop_group(process, signal.SIGINT)
        shutil.rmtree(data_root, ignore_errors=True)


class SlowListingServer:
    """Serves the listing over HTTP on 127.0.0.1 after a delay, so each run takes a while.

    Runs that take longer than the daemon's dequeue interval would overlap without the
    concurrency guard; quick ones finish before the next tick and prove nothing.
    """

    def __init__(self, listing: Path, delay_seconds: float) -> None:
        body = listing.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(delay_seconds)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/nixpkgs.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_listing(tmp_path: Path) -> Iterator[str]:
    server = SlowListingServer(write_small_listing(tmp_path), LISTING_DELAY_SECONDS)
    yield server.url
    server.close()


def compose_service(name: str) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"][name]


@dataclass
class Deployment:
    webserver_url: str
    home: Path
    output_path: Path
    logs: dict[str, Path]

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
            parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            f"{self.webserver_url}/graphql",
            json={"query": query, "variables": variables},
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


@pytest.fixture
def deployment(postgres: Postgres, slow_listing: str, tmp_path: Path) -> Iterator[Deployment]:
    code_port, web_port = free_port(), free_port()
    storage = tmp_path / "storage"
    home = tmp_path / "deploy"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        DEPLOY_INSTANCE.read_text(encoding="utf-8").replace("/opt/dagster/storage", str(storage))
    )
    workspace = yaml.safe_load(DEPLOY_WORKSPACE.read_text(encoding="utf-8"))
    server = workspace["load_from"][0]["grpc_server"]
    server |= {"host": "127.0.0.1", "port": code_port}
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    # What the containers would differ in: addresses, ports and paths.
    ports = {"4000": str(code_port), "3000": str(web_port)}

    def localize(argument: str) -> str:
        argument = argument.replace("/opt/dagster/deploy", str(home)).replace(
            "0.0.0.0", "127.0.0.1"
        )
        return re.sub(r"\b(4000|3000)\b", lambda match: ports[match.group(1)], argument)

    output_path = tmp_path / "out" / "fdnix-data.lancedb"
    base_env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DAGSTER_HOME", "PROCESSING_MODE", "DUCKDB_KEY", "ARTIFACTS_BUCKET")
    }
    base_env["PATH"] = f"{VENV_BIN}{os.pathsep}{base_env.get('PATH', '')}"
    fdnix_env = {
        "NIXPKGS_JSON": slow_listing,
        "OUTPUT_PATH": str(output_path),
        "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
        "HF_HUB_OFFLINE": "1",
        "LANCEDB_LOG": "error",
    }
    processes: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}
    deployment = Deployment(
        webserver_url=f"http://127.0.0.1:{web_port}", home=home, output_path=output_path, logs=logs
    )

    def service_env(name: str) -> dict[str, str]:
        env = dict(base_env)
        for key, value in compose_service(name)["environment"].items():
            if value is not None and not key.startswith("DAGSTER_POSTGRES_"):
                env[key] = localize(str(value))
        env |= postgres.env | {"DAGSTER_HOME": str(home)}
        return env | (fdnix_env if name == "user_code" else {})

    def start(name: str) -> None:
        command = [localize(argument) for argument in compose_service(name)["entrypoint"]]
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("wb") as log:
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=tmp_path,
                    env=service_env(name),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def healthy(name: str) -> Callable[[], bool]:
        test = [localize(argument) for argument in compose_service(name)["healthcheck"]["test"]]
        assert test[0] == "CMD"

        def check() -> bool:
            for process in processes:
                assert process.poll() is None, f"{process.args[0]} exited:\n{deployment.log_tail()}"
            completed = subprocess.run(
                test[1:], env=service_env(name), capture_output=True, timeout=60, check=False
            )
            return completed.returncode == 0

        return check

    try:
        # The order compose's depends_on conditions impose.
        setup = compose_service("instance_setup")["entrypoint"]
        completed = subprocess.run(
            setup, env=service_env("instance_setup"), capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        start("user_code")
        _wait_until(healthy("user_code"), "user_code", deployment.log_tail)
        start("webserver")
        start("daemon")
        _wait_until(healthy("webserver"), "webserver", deployment.log_tail)
        _wait_until(healthy("daemon"), "daemon", deployment.log_tail)
        yield deployment
    finally:
        for process in reversed(processes):
            _stop_group(process)


def _launch_metadata_run(deployment: Deployment) -> str:
    params = {
        "selector": {
            "repositoryLocationName": "fdnix",
            "repositoryName": "__repository__",
            "jobName": "metadata_job",
        },
        # metadata_job runs in one process (in_process_executor): no executor config needed.
        "runConfigData": {},
    }
    result = deployment.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def test_compose_services_run_dataset_writing_runs_one_at_a_time(
    deployment: Deployment, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs queued at once, neither tagged: the pool alone keeps them apart."""
    first = _launch_metadata_run(deployment)
    second = _launch_metadata_run(deployment)

    for name, value in postgres.env.items():
        monkeypatch.setenv(name, value)
    # The run history is in PostgreSQL, read through the same instance configuration.
    with DagsterInstance.from_config(str(deployment.home)) as instance:
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while True:
            runs = [instance.get_run_by_id(run_id) for run_id in (first, second)]
            if all(run is not None and run.is_finished for run in runs):
                break
            assert time.monotonic() < deadline, (
                f"runs not finished: {[r and r.status for r in runs]}\n{deployment.log_tail()}"
            )
            time.sleep(2)
        records = {
            record.dagster_run.run_id: record
            for record in instance.get_run_records()
            if record.dagster_run.run_id in (first, second)
        }

    for run_id in (first, second):
        assert records[run_id].dagster_run.status == DagsterRunStatus.SUCCESS, (
            f"{run_id}: {records[run_id].dagster_run.status}\n{deployment.log_tail()}"
        )
    started = sorted(records.values(), key=lambda record: record.start_time or 0)
    earlier, later = started
    assert earlier.end_time is not None and later.start_time is not None
    assert later.start_time >= earlier.end_time, (
        "two runs writing the same dataset overlapped: "
        f"{earlier.start_time}-{earlier.end_time} and {later.start_time}-{later.end_time}"
    )
