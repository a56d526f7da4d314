"""The Dagster UI in a real browser: materialize the main dataset the way an operator would.

Starts ``dagster dev`` (webserver, daemon, code server) on 127.0.0.1 against a temporary
DAGSTER_HOME, drives Debian's Chromium through Playwright to the asset graph, selects
``nixpkgs_packages`` and clicks "Materialize selected", then follows the run through the
GraphQL API until it succeeds. Screenshots land in ``test-artifacts/``.

Chromium and Playwright are requirements here, not options: without them this test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import pytest
import requests
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from fdnix_assets_tests.conftest import REPO_ROOT, free_port
from fdnix_assets_tests.samples import SMALL_LISTING_SIZE, write_small_listing

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
ASSET = "nixpkgs_packages"
STARTUP_TIMEOUT_SECONDS = 150
RUN_TIMEOUT_SECONDS = 240
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
# The developer's configuration must not leak into the instance the test starts.
CLEARED_VARIABLES = (
    "DAGSTER_HOME",
    "PROCESSING_MODE",
    "DUCKDB_KEY",
    "NIXPKGS",
    "ARTIFACTS_BUCKET",
    "PUBLISH_LAYER",
    "EMBEDDING_BACKEND",
)

RUNS_QUERY = """
query FdnixRuns {
  runsOrError {
    __typename
    ... on Runs {
      results { runId status jobName assetSelection { path } }
    }
    ... on PythonError { message }
  }
}
"""
MATERIALIZATIONS_QUERY = """
query FdnixMaterializations($assetKey: AssetKeyInput!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { runId } }
  }
}
"""


@dataclass(frozen=True)
class DagsterDev:
    url: str
    output_path: Path
    log_path: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _default_signals() -> None:
    # dagster dev started by a process that ignores SIGINT/SIGTERM inherits that and then
    # survives them (NOTES.md); give it the default handlers so the group can be stopped.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        process.poll()
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[DagsterDev]:
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    listing = write_small_listing(tmp_path)
    output_path = tmp_path / "out" / "fdnix-data.lancedb"
    env = {name: value for name, value in os.environ.items() if name not in CLEARED_VARIABLES}
    env |= {
        "DAGSTER_HOME": str(home),
        "NIXPKGS_JSON": str(listing),
        "OUTPUT_PATH": str(output_path),
        "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
        "HF_HUB_OFFLINE": "1",
        "LANCEDB_LOG": "error",
    }
    port = free_port()
    log_path = tmp_path / "dagster-dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,
        )
    server = DagsterDev(url=f"http://127.0.0.1:{port}", output_path=output_path, log_path=log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            assert process.poll() is None, f"dagster dev exited:\n{server.log_tail()}"
            try:
                if requests.get(f"{server.url}/server_info", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"dagster dev did not come up:\n{server.log_tail()}"
            time.sleep(1)
        yield server
    finally:
        _stop_process_group(process)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
        "the UI test needs a real browser and never downloads one"
    )
    playwright: Playwright
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _wait_for_run(server: DagsterDev, short_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        runs = server.graphql(RUNS_QUERY)["runsOrError"]
        assert runs["__typename"] == "Runs", runs
        matching = [run for run in runs["results"] if run["runId"].startswith(short_id)]
        assert len(matching) == 1, f"run {short_id} not found among {runs['results']}"
        run = matching[0]
        if run["status"] in TERMINAL_STATUSES:
            return run
        assert time.monotonic() < deadline, (
            f"run {run['runId']} still {run['status']} after {RUN_TIMEOUT_SECONDS} s:\n"
            f"{server.log_tail()}"
        )
        time.sleep(2)


def test_materialize_main_dataset_from_the_asset_graph(
    dagster_dev: DagsterDev, browser: BrowserContext
) -> None:
    (ARTIFACTS / "ui-failure.png").unlink(missing_ok=True)
    page = browser.pages[0] if browser.pages else browser.new_page()
    # A fresh instance greets the first visitor with a newsletter dialog; dismiss it
    # whenever it covers what the test clicks.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
    try:
        page.goto(f"{dagster_dev.url}/asset-groups", wait_until="domcontentloaded")
        node = page.locator(f'foreignObject [data-tooltip="{ASSET}"]')
        node.wait_for(state="visible", timeout=90_000)
        node.click()

        materialize = page.get_by_role("button").filter(
            has_text=re.compile(r"^Materialize selected")
        )
        materialize.click()
        toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
        toast.wait_for(timeout=60_000)
        short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)

        run = _wait_for_run(dagster_dev, short_id)
        assert run["status"] == "SUCCESS", (
            f"run {run['runId']} ended {run['status']}:\n{dagster_dev.log_tail()}"
        )
        assert run["assetSelection"] == [{"path": [ASSET]}]

        latest = dagster_dev.graphql(MATERIALIZATIONS_QUERY, {"assetKey": {"path": [ASSET]}})
        assert latest["assetOrError"]["assetMaterializations"] == [{"runId": run["runId"]}]
        table = lancedb.connect(str(dagster_dev.output_path)).open_table("packages")
        assert table.count_rows() == SMALL_LISTING_SIZE

        # What an operator sees afterwards: the asset's page with its materialization.
        page.goto(f"{dagster_dev.url}/assets/{ASSET}", wait_until="domcontentloaded")
        page.get_by_text(run["runId"][:8]).first.wait_for(timeout=60_000)
        screenshot = _screenshot(page, "ui-materialized-nixpkgs_packages.png")
        assert screenshot.stat().st_size > 10_000
    except BaseException:
        _screenshot(page, "ui-failure.png")
        raise
