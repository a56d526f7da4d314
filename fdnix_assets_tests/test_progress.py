"""Long phases say they are alive: nix-env evaluating and snapshots uploading to S3 report
progress while they run (texts embedded: see the embedding tests), and every dataset asset
records dagster/row_count so its page plots the row count over time."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import boto3
import lancedb
import pyarrow as pa
from boto3.s3.transfer import TransferConfig
from dagster import DagsterInstance, materialize

from fdnix_assets.assets.metadata import nixpkgs_packages
from fdnix_assets.definitions import build_resources
from fdnix_assets.nix.extract import run_nix_env
from fdnix_assets.settings import load_settings
from fdnix_assets.storage_s3 import S3DatasetStore
from fdnix_assets_tests.embedding_helpers import first_packages, write_listing

# Evaluation blocks on reading a named pipe until the test has seen a progress line, so the
# evaluation is "long" for exactly as long as the test needs, whatever the machine's speed.
GATED_NIXPKGS = """
{ config ? { }, system ? builtins.currentSystem }:
{
  gated = derivation { name = "gated-1.0"; inherit system; builder = "/bin/sh"; }
    // { pname = "gated"; version = "1.0"; meta.description = builtins.readFile ./gate; };
}
"""


def test_a_long_nix_env_evaluation_logs_that_it_is_still_running(tmp_path: Path) -> None:
    nixpkgs = tmp_path / "gated"
    nixpkgs.mkdir()
    (nixpkgs / "default.nix").write_text(GATED_NIXPKGS)
    gate = nixpkgs / "gate"
    os.mkfifo(gate)
    messages: list[str] = []
    progress_seen = threading.Event()

    def log(message: str) -> None:
        messages.append(message)
        if "still evaluating" in message:
            progress_seen.set()

    def release_after_progress() -> None:
        progress_seen.wait(timeout=60)
        gate.write_text("released after a progress line")

    releaser = threading.Thread(target=release_after_progress, daemon=True)
    releaser.start()
    listing = run_nix_env(str(nixpkgs), tmp_path / "work", log=log, progress_interval=0.05)
    releaser.join(timeout=5)

    assert progress_seen.is_set(), messages
    progress = [m for m in messages if m.startswith(f"nix-env still evaluating {nixpkgs}: ")]
    assert progress and all("bytes of JSON written so far" in m for m in progress)
    assert b"released after a progress line" in listing.read_bytes()


def test_s3_uploads_report_bytes_sent_until_complete(tmp_path: Path, s3_bucket: str) -> None:
    staged = tmp_path / "fdnix.lancedb"
    lancedb.connect(str(staged)).create_table(
        "packages", data=pa.table({"attr_path": ["hello"], "description": ["greets"]})
    )
    # Incompressible bytes in 5 MiB parts: several progress events per file.
    (staged / "packages.lance" / "noise.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    total = sum(path.stat().st_size for path in staged.rglob("*") if path.is_file())
    reports: list[tuple[int, int]] = []
    store = S3DatasetStore(
        boto3.client("s3"),
        s3_bucket,
        "snapshots/fdnix.lancedb",
        "fdnix.lancedb",
        transfer_config=TransferConfig(
            multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
        ),
        upload_progress=lambda sent, size, seconds: reports.append((sent, size)),
        progress_interval=0.0,
    )

    report = store.publish(staged, "20261125T000000000000Z-progress")

    assert report.total_bytes == total
    assert reports[-1] == (total, total)
    sent = [sent for sent, _ in reports]
    assert sent == sorted(sent) and all(size == total for _, size in reports)


def test_publishing_to_s3_logs_the_upload_and_records_the_row_count(
    tmp_path: Path, s3_bucket: str
) -> None:
    listing = write_listing(tmp_path / "listing.json", first_packages(25))
    settings = load_settings(
        {
            "NIXPKGS_JSON": str(listing),
            "ARTIFACTS_BUCKET": s3_bucket,
            "LANCEDB_DATA_KEY": f"progress/{uuid.uuid4().hex[:8]}/fdnix-data.lancedb",
            "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
        }
    )
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [nixpkgs_packages], resources=build_resources(settings), instance=instance
        )
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    uploads = [m for m in messages if m.startswith("uploading the main dataset: ")]
    assert uploads and " MB in " in uploads[-1] and "MB/s" in uploads[-1]
    (materialization,) = result.asset_materializations_for_node("nixpkgs_packages")
    assert materialization.metadata["dagster/row_count"].value == 25
