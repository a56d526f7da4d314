"""Upload and download throughput of a dataset through the S3 snapshot store, against moto.

    python benchmarks/storage_throughput.py DATASET_DIR [--workdir DIR]

Starts its own moto server (a separate process on 127.0.0.1, so client and server do not
share one interpreter), then in the same run:

- ``upload_baseline_mb_s``: a plain loop of ``client.upload_file`` over the tree, one file
  at a time (boto3's defaults, as a straightforward script would upload it);
- ``upload_mb_s``: :meth:`S3DatasetStore.publish`, end to end: checksums, the parallel upload,
  the verification listing, the manifest and the pointer;
- ``download_mb_s``: :meth:`S3DatasetStore.checkout` of that snapshot, end to end, including
  the size and sha256 verification.

moto keeps objects in its own process and is CPU-bound, so these figures compare the methods
on one machine; they are not what AWS S3 would give. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

MAIN_DATASET = "fdnix-data.lancedb"
BUCKET = "fdnix-benchmark"
PREFIX = "snapshots/fdnix-data.lancedb"


def measure_storage_throughput(
    dataset_dir: Path, work_dir: Path | None = None, embed_sample: int | None = None
) -> dict[str, Any]:
    """Throughput of publishing and checking out ``dataset_dir`` through a local moto server.

    ``dataset_dir`` is a LanceDB directory, or a benchmark work directory holding
    ``fdnix-data.lancedb`` (how ``benchmarks/run.py`` calls it). ``embed_sample`` is accepted
    for run.py's calling convention and not used.
    """
    del embed_sample
    dataset = _dataset_in(Path(dataset_dir))
    scratch = Path(tempfile.mkdtemp(prefix="fdnix-storage-bench-", dir=work_dir))
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    environment = os.environ | {
        "AWS_ACCESS_KEY_ID": "benchmark",
        "AWS_SECRET_ACCESS_KEY": "benchmark",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    previous_environment = dict(os.environ)
    try:
        os.environ.update(environment)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(name, None)
        return _measure(dataset, scratch, endpoint)
    finally:
        os.environ.clear()
        os.environ.update(previous_environment)
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(dataset: Path, scratch: Path, endpoint: str) -> dict[str, Any]:
    from dagster_aws.s3 import S3Resource

    from fdnix_assets.storage import tree_listing
    from fdnix_assets.storage_s3 import S3DatasetStore

    client = S3Resource(region_name="us-east-1").get_client()
    _wait_for_server(client, endpoint)
    client.create_bucket(Bucket=BUCKET)
    files = tree_listing(dataset)
    total_bytes = sum(files.values())
    megabytes = total_bytes / 1e6

    started = time.perf_counter()
    for relative in files:
        client.upload_file(str(dataset / relative), BUCKET, f"baseline/{relative}")
    baseline_seconds = time.perf_counter() - started

    store = S3DatasetStore(client, BUCKET, PREFIX, MAIN_DATASET)
    started = time.perf_counter()
    report = store.publish(dataset, "20260101T000000000000Z-bench")
    upload_seconds = time.perf_counter() - started

    target = scratch / "downloaded" / MAIN_DATASET
    started = time.perf_counter()
    store.checkout(store.require_latest(), target)
    download_seconds = time.perf_counter() - started
    if tree_listing(target) != files:
        raise RuntimeError(f"the download of {report.snapshot.uri} differs from {dataset}")

    return {
        "storage_dataset_mb": round(megabytes, 1),
        "storage_files": len(files),
        "upload_mb_s": round(megabytes / upload_seconds, 1),
        "upload_s": round(upload_seconds, 2),
        "upload_transfer_mb_s": round(report.upload_megabytes_per_second, 1),
        "upload_baseline_mb_s": round(megabytes / baseline_seconds, 1),
        "upload_baseline_s": round(baseline_seconds, 2),
        "download_mb_s": round(megabytes / download_seconds, 1),
        "download_s": round(download_seconds, 2),
        "storage_server": "moto 5 in a separate process on 127.0.0.1",
    }


def _dataset_in(path: Path) -> Path:
    if not any(path.glob("*.lance")) and (path / MAIN_DATASET).is_dir():
        path = path / MAIN_DATASET
    path = path.resolve()
    if not path.is_dir() or not any(path.glob("*.lance")):
        raise SystemExit(f"{path} is not a LanceDB dataset (no *.lance table inside)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(client: Any, endpoint: str, timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start on {endpoint}") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a LanceDB directory (or a benchmark workdir)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space for the copy")
    args = parser.parse_args(argv)
    print(json.dumps(measure_storage_throughput(args.dataset, args.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
