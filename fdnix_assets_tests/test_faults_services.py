"""S3 and Bedrock misbehaving over the wire: clean failure or retry, and nothing users are
served is lost or corrupted.

S3 faults come from a small fault-injecting HTTP proxy (:class:`FaultProxy`) in front of the
session's real moto server: it forwards every request and, when told to, cuts a response
half way through its body, answers throttling or server errors, pretends the bucket is gone,
or stops listening altogether (the server going away mid-transfer) and later comes back. The
code under test talks to the proxy exactly as it talks to S3; the tests check the outcome
through a direct client to moto. Bedrock faults come from the stand-in
(fdnix_assets_tests/bedrock_standin.py) through the real embedding asset.

Every test ends by checking that the last good snapshot is intact and the pointer is where it
should be.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from dagster import DagsterInstance, materialize
from dagster_aws.s3 import S3Resource

from fdnix_assets.assets.metadata import nixpkgs_packages
from fdnix_assets.definitions import build_resources
from fdnix_assets.io_managers import DatasetIOManager
from fdnix_assets.resources import DatasetStorage, NixpkgsSource
from fdnix_assets.settings import load_settings
from fdnix_assets.storage import StorageError, tree_listing
from fdnix_assets.storage_s3 import S3DatasetStore
from fdnix_assets_tests.bedrock_standin import BedrockStandIn, titan_embedding
from fdnix_assets_tests.conftest import SAMPLE_LISTING
from fdnix_assets_tests.embedding_helpers import (
    embedding_metadata,
    failed_embeddings,
    make_buckets,
    publish_bedrock_slice,
    run_embeddings,
    texts_by_path,
)

PREFIX = "snapshots/fdnix-data.lancedb"
DATASET = "fdnix-data.lancedb"
GOOD_ID = "20260101T000000000000Z-good"
NEXT_ID = "20260102T000000000000Z-next"
SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = (500, "InternalError", "We encountered an internal error. Please try again.")
NO_SUCH_BUCKET = (404, "NoSuchBucket", "The specified bucket does not exist")


# The fault-injecting proxy


@dataclass
class Fault:
    """What to do to requests of one method: let ``after`` through, then act ``times``
    times (None: on every later request)."""

    method: str
    action: str  # "cut" (half the body, then the connection drops), "answer", "stop"
    after: int = 0
    times: int | None = 1
    status: int = 0
    code: str = ""
    message: str = ""
    objects_only: bool = True
    seen: int = 0
    done: int = 0

    def applies(self, method: str, path: str) -> bool:
        if method != self.method or (self.objects_only and not is_object_request(path)):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.done >= self.times):
            return False
        self.done += 1
        return True


def is_object_request(path: str) -> bool:
    """A request for one object (GET/PUT/HEAD of a key), not a listing or a bucket call."""
    parsed = urllib.parse.urlsplit(path)
    bucket, _, key = parsed.path.lstrip("/").partition("/")
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    return bool(bucket and key) and not {"list-type", "uploads", "delete"} & set(query)


class FaultProxy:
    """An HTTP proxy to one upstream S3 endpoint that injects the faults it is given."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults: list[Fault] = []
        self.injected: list[str] = []
        self.stopped = False
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self.stopped = False
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self.endpoint

    def stop(self) -> None:
        """The server goes away: nothing listens, open connections drop at their next use."""
        with self.lock:
            self.stopped = True
            server, self._server = self._server, None
        if server is not None:
            threading.Thread(target=lambda: (server.shutdown(), server.server_close())).start()

    def restart(self) -> None:
        """The server comes back on the same port, with no faults left."""
        self.stop()
        with self.lock:
            self.faults.clear()
        self.start()

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def answer(
        self, method: str, error: tuple[int, str, str], times: int | None, after: int = 0
    ) -> None:
        """Answer ``times`` object requests of ``method`` (None: all) with an S3 error."""
        status, code, message = error
        self.add(Fault(method, "answer", after, times, status, code, message))

    def decide(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.applies(method, path):
                    self.injected.append(f"{fault.action} {method} {path}")
                    return fault
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _forward(self) -> None:
        body = self._read_body()
        if self.proxy.stopped:
            self._drop_connection()
            return
        fault = self.proxy.decide(self.command, self.path)
        if fault is not None and fault.action == "answer":
            self._answer_error(fault)
            return
        if fault is not None and fault.action == "stop" and self.command != "GET":
            # Mid-upload: the request arrived, the server died before it stored anything.
            self.proxy.stop()
            self._drop_connection()
            return
        upstream = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
        skipped = {"transfer-encoding", "connection", "expect", "content-length"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skipped}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        payload = b"" if self.command == "HEAD" else response.read()
        length = response.getheader("Content-Length") if self.command == "HEAD" else len(payload)
        upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in skipped | {"date", "server"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(length or 0))
        self.end_headers()
        if fault is None or not payload:
            self.wfile.write(payload)
            return
        # Half the body, then the connection (and, for "stop", the whole server) goes away.
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        if fault.action == "stop":
            self.proxy.stop()
        self._drop_connection()

    def _answer_error(self, fault: Fault) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
            f"<Message>{fault.message}</Message><RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def proxy(aws_env: str) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(aws_env)
    fault_proxy.start()
    yield fault_proxy
    fault_proxy.stop()


# Snapshots to publish and read back


def make_dataset(directory: Path, fragments: int = 6, rows: int = 50) -> Path:
    """A real LanceDB ``packages`` table written in several appends (several data files)."""
    rng = np.random.default_rng(11)
    db = lancedb.connect(str(directory))
    table = None
    for fragment in range(fragments):
        start = fragment * rows
        data = pa.table(
            {
                "attr_path": [f"pkgs.p{index}" for index in range(start, start + rows)],
                "description": [f"package number {index}" for index in range(start, start + rows)],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(rng.normal(size=rows * 8).astype(np.float32)), 8
                ),
            }
        )
        if table is None:
            table = db.create_table("packages", data)
        else:
            table.add(data)
    return directory


def rows_of(path: Path) -> list[dict[str, Any]]:
    table = lancedb.connect(str(path)).open_table("packages")
    return table.to_arrow().sort_by("attr_path").to_pylist()


@dataclass
class S3Setup:
    """A bucket holding one good published snapshot, and clients to moto and the proxy."""

    bucket: str
    direct: S3DatasetStore
    good_tree: Path
    pointer: bytes
    proxy: FaultProxy

    def through_proxy(self, max_attempts: int = 5) -> S3DatasetStore:
        client = S3Resource(
            region_name="us-east-1", endpoint_url=self.proxy.endpoint, max_attempts=max_attempts
        ).get_client()
        return S3DatasetStore(client, self.bucket, PREFIX, DATASET)

    def pointer_now(self) -> bytes:
        client = self.direct.client
        return client.get_object(Bucket=self.bucket, Key=f"{PREFIX}/latest")["Body"].read()

    def assert_last_good_snapshot_served(self, tmp_path: Path) -> None:
        """The pointer is unchanged and what it names downloads complete and verified."""
        assert self.pointer_now() == self.pointer
        assert self.direct.require_latest().snapshot_id == GOOD_ID
        copy = self.direct.checkout(self.direct.require_latest(), tmp_path / "verify-copy")
        assert tree_listing(copy) == tree_listing(self.good_tree)
        assert rows_of(copy) == rows_of(self.good_tree)


@pytest.fixture
def s3_setup(s3_bucket: str, proxy: FaultProxy, tmp_path: Path) -> S3Setup:
    client = S3Resource(region_name="us-east-1").get_client()
    direct = S3DatasetStore(client, s3_bucket, PREFIX, DATASET)
    good = make_dataset(tmp_path / "good")
    direct.publish(good, GOOD_ID)
    pointer = client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/latest")["Body"].read()
    return S3Setup(s3_bucket, direct, good, pointer, proxy)


def leftovers(directory: Path) -> list[str]:
    """Partial downloads left beside a checkout target."""
    if not directory.exists():
        return []
    return sorted(path.name for path in directory.iterdir() if "partial" in path.name)


# S3: downloads


def test_a_connection_cut_mid_download_is_retried_and_the_copy_verifies(
    s3_setup: S3Setup, tmp_path: Path
) -> None:
    s3_setup.proxy.add(Fault("GET", "cut", after=2, times=2))
    store = s3_setup.through_proxy()
    copy = store.checkout(store.require_latest(), tmp_path / "checkouts" / "copy")
    assert len([line for line in s3_setup.proxy.injected if line.startswith("cut")]) == 2
    assert tree_listing(copy) == tree_listing(s3_setup.good_tree)
    assert rows_of(copy) == rows_of(s3_setup.good_tree)
    assert leftovers(tmp_path / "checkouts") == []
    s3_setup.assert_last_good_snapshot_served(tmp_path)


def test_the_server_stopping_mid_download_fails_cleanly_then_the_checkout_completes(
    s3_setup: S3Setup, tmp_path: Path
) -> None:
    store = s3_setup.through_proxy(max_attempts=2)
    snapshot = store.require_latest()
    target = tmp_path / "checkouts" / "copy"
    make_dataset(target, fragments=1)  # an older copy already there must survive the failure
    older = rows_of(target)
    s3_setup.proxy.add(Fault("GET", "stop", after=3))

    with pytest.raises(StorageError) as failure:
        store.checkout(snapshot, target)
    message = str(failure.value)
    assert f"s3://{s3_setup.bucket}/{PREFIX}/" in message
    assert "downloading" in message or "cannot reach" in message
    assert any(line.startswith("stop GET") for line in s3_setup.proxy.injected)
    assert rows_of(target) == older, "the previous local copy was replaced by a partial one"
    assert leftovers(tmp_path / "checkouts") == []

    s3_setup.proxy.restart()
    copy = store.checkout(snapshot, target)
    assert rows_of(copy) == rows_of(s3_setup.good_tree)
    s3_setup.assert_last_good_snapshot_served(tmp_path)


def test_server_errors_on_every_download_fail_cleanly(s3_setup: S3Setup, tmp_path: Path) -> None:
    s3_setup.proxy.answer("GET", INTERNAL_ERROR, times=None)
    store = s3_setup.through_proxy(max_attempts=2)
    with pytest.raises(StorageError, match="InternalError"):
        store.checkout(s3_setup.direct.require_latest(), tmp_path / "checkouts" / "copy")
    assert not (tmp_path / "checkouts" / "copy").exists()
    assert leftovers(tmp_path / "checkouts") == []
    s3_setup.assert_last_good_snapshot_served(tmp_path)


# S3: uploads


def test_the_server_stopping_mid_upload_leaves_the_pointer(
    s3_setup: S3Setup, tmp_path: Path
) -> None:
    s3_setup.proxy.add(Fault("PUT", "stop", after=3))
    store = s3_setup.through_proxy(max_attempts=2)
    with pytest.raises(StorageError, match=f"s3://{s3_setup.bucket}/{PREFIX}/"):
        store.publish(make_dataset(tmp_path / "next", fragments=3), NEXT_ID)
    assert any(line.startswith("stop PUT") for line in s3_setup.proxy.injected)
    # Whatever reached S3 before the stop has no manifest: never listed, never pointed to.
    assert s3_setup.direct.list_snapshots() == [GOOD_ID]
    s3_setup.assert_last_good_snapshot_served(tmp_path)

    # Back up: the same data publishes under a new id and becomes the latest.
    s3_setup.proxy.restart()
    report = store.publish(tmp_path / "next", "20260103T000000000000Z-again")
    assert s3_setup.direct.require_latest().snapshot_id == report.snapshot.snapshot_id
    copy = s3_setup.direct.checkout(report.snapshot, tmp_path / "again-copy")
    assert rows_of(copy) == rows_of(tmp_path / "next")


def test_slow_down_answers_are_retried(s3_setup: S3Setup, tmp_path: Path) -> None:
    s3_setup.proxy.answer("PUT", SLOW_DOWN, times=3)
    store = s3_setup.through_proxy()
    next_tree = make_dataset(tmp_path / "next", fragments=2)
    report = store.publish(next_tree, NEXT_ID)
    assert len([line for line in s3_setup.proxy.injected if line.startswith("answer PUT")]) == 3
    assert s3_setup.direct.require_latest().snapshot_id == report.snapshot.snapshot_id == NEXT_ID
    copy = s3_setup.direct.checkout(report.snapshot, tmp_path / "next-copy")
    assert rows_of(copy) == rows_of(next_tree)
    # The snapshot that was the latest is still there, complete.
    good = s3_setup.direct.checkout(s3_setup.direct.snapshot(GOOD_ID), tmp_path / "good-copy")
    assert rows_of(good) == rows_of(s3_setup.good_tree)


def test_throttling_that_never_ends_fails_cleanly(s3_setup: S3Setup, tmp_path: Path) -> None:
    s3_setup.proxy.answer("PUT", SLOW_DOWN, times=None)
    store = s3_setup.through_proxy(max_attempts=2)
    with pytest.raises(StorageError, match="SlowDown"):
        store.publish(make_dataset(tmp_path / "next", fragments=2), NEXT_ID)
    assert s3_setup.direct.list_snapshots() == [GOOD_ID]
    assert s3_setup.direct._list_objects(s3_setup.direct.snapshot_prefix(NEXT_ID)) == []
    s3_setup.assert_last_good_snapshot_served(tmp_path)


def test_a_bucket_that_disappears_mid_upload(s3_setup: S3Setup, tmp_path: Path) -> None:
    s3_setup.proxy.answer("PUT", NO_SUCH_BUCKET, times=None, after=2)
    store = s3_setup.through_proxy()
    with pytest.raises(StorageError, match=f"bucket '{s3_setup.bucket}' does not exist"):
        store.publish(make_dataset(tmp_path / "next", fragments=3), NEXT_ID)
    assert s3_setup.direct.list_snapshots() == [GOOD_ID]
    s3_setup.assert_last_good_snapshot_served(tmp_path)


# The metadata asset against S3 faults


def small_dump(path: Path, count: int = 40) -> Path:
    packages = json.loads(SAMPLE_LISTING.read_bytes())
    path.write_text(json.dumps({name: packages[name] for name in list(packages)[:count]}))
    return path


def s3_metadata_resources(tmp_path: Path, bucket: str) -> dict[str, Any]:
    """The resources of a metadata run on a small dump, storing in ``bucket``."""
    env = {
        "NIXPKGS_JSON": str(small_dump(tmp_path / "dump.json")),
        "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
        "ARTIFACTS_BUCKET": bucket,
    }
    return build_resources(load_settings(env))


def test_a_bucket_deleted_between_runs_fails_the_run_naming_it(
    aws_env: str, s3_bucket: str, tmp_path: Path
) -> None:
    resources = s3_metadata_resources(tmp_path, s3_bucket)
    with DagsterInstance.ephemeral() as instance:
        assert materialize([nixpkgs_packages], resources=resources, instance=instance).success
        client = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
        keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
        client.delete_objects(Bucket=s3_bucket, Delete={"Objects": [{"Key": k} for k in keys]})
        client.delete_bucket(Bucket=s3_bucket)

        result = materialize(
            [nixpkgs_packages], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    failure = result.failure_data_for_node("nixpkgs_packages")
    assert failure is not None and failure.error is not None
    assert f"bucket {s3_bucket!r} does not exist" in failure.error.to_string()
    assert "ARTIFACTS_BUCKET" in failure.error.to_string()
    assert result.asset_materializations_for_node("nixpkgs_packages") == []
    assert not (tmp_path / "out" / "fdnix-data.lancedb").exists()
    assert list((tmp_path / "out" / ".fdnix-work").glob("*/*")) == []


def test_the_dump_download_stopping_half_way_fails_and_keeps_the_dataset(
    aws_env: str, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    client = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    client.upload_file(str(small_dump(tmp_path / "dump.json")), s3_bucket, "dumps/nixpkgs.json")
    output = tmp_path / "out" / "fdnix-data.lancedb"
    env = {"NIXPKGS_JSON": f"s3://{s3_bucket}/dumps/nixpkgs.json", "OUTPUT_PATH": str(output)}
    resources = build_resources(load_settings(env))
    # The dump comes through the proxy; the dataset itself is local.
    resources["nixpkgs_source"] = NixpkgsSource(
        nixpkgs_json=env["NIXPKGS_JSON"],
        s3=S3Resource(region_name="us-east-1", endpoint_url=proxy.endpoint, max_attempts=2),
    )
    with DagsterInstance.ephemeral() as instance:
        assert materialize([nixpkgs_packages], resources=resources, instance=instance).success
        before = (os.path.realpath(output), rows_of(output))
        proxy.add(Fault("GET", "stop"))
        result = materialize(
            [nixpkgs_packages], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    assert any(line.startswith("stop GET") for line in proxy.injected)
    failure = result.failure_data_for_node("nixpkgs_packages")
    assert failure is not None and failure.error is not None
    assert f"NIXPKGS_JSON=s3://{s3_bucket}/dumps/nixpkgs.json: could not be read" in (
        failure.error.to_string()
    )
    assert (os.path.realpath(output), rows_of(output)) == before
    assert list((tmp_path / "out" / ".fdnix-work").glob("*/*")) == []


# Bedrock, through the embedding asset

BEDROCK_PACKAGES = 120


@pytest.fixture
def buckets(bedrock_standin: BedrockStandIn, aws_env: str) -> tuple[str, str]:
    return make_buckets(aws_env)


@dataclass
class MainDataset:
    """The main dataset the metadata phase published, as the embedding phase finds it."""

    snapshot_dir: str
    rows: list[dict[str, Any]]


def main_dataset(settings: Any) -> MainDataset:
    path = settings.output_path
    table = lancedb.connect(str(path)).open_table("packages")
    return MainDataset(os.path.realpath(path), table.to_arrow().sort_by("attr_path").to_pylist())


def assert_no_row_lost_and_vectors_verified(
    settings: Any, before: MainDataset, dimensions: int = 256
) -> int:
    """Every row the metadata phase published is still there with the same metadata; every
    vector present is the model's vector of that package's own text. Returns how many."""
    after = main_dataset(settings)
    strip = [{k: v for k, v in row.items() if k != "vector"} for row in after.rows]
    assert strip == [{k: v for k, v in row.items() if k != "vector"} for row in before.rows]
    texts = texts_by_path(settings)
    checked = 0
    for row in after.rows:
        if row["vector"] is None:
            continue
        expected = np.asarray(titan_embedding(texts[row["attr_path"]], dimensions), np.float32)
        np.testing.assert_allclose(row["vector"], expected, atol=1e-6, err_msg=row["attr_path"])
        checked += 1
    return checked


def assert_snapshot_unchanged(before: MainDataset) -> None:
    table = lancedb.connect(before.snapshot_dir).open_table("packages")
    assert table.to_arrow().sort_by("attr_path").to_pylist() == before.rows


def records_submitted(standin: BedrockStandIn) -> int:
    return sum(job.record_count for job in standin.jobs.values()) + standin.invoke_model_calls


def test_a_refused_submission_fails_the_run_and_loses_nothing(
    tmp_path: Path, bedrock_standin: BedrockStandIn, buckets: tuple[str, str]
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, BEDROCK_PACKAGES)
    before = main_dataset(settings)
    bedrock_standin.refuse_next_submission("AccessDeniedException")

    _, message = failed_embeddings(resources)
    assert "AccessDeniedException" in message
    assert bedrock_standin.created_job_count == 0
    assert_snapshot_unchanged(before)
    assert assert_no_row_lost_and_vectors_verified(settings, before) == 0

    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == BEDROCK_PACKAGES
    assert assert_no_row_lost_and_vectors_verified(settings, before) == BEDROCK_PACKAGES
    assert records_submitted(bedrock_standin) == BEDROCK_PACKAGES, "a text was paid for twice"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("duplicate_ids", "repeats record"),
        ("unknown_ids", "which the job never had"),
        ("wrong_dimension", "-dimensional embedding; 256 were asked for"),
        ("missing_output", "holds no .jsonl.out output"),
    ],
)
def test_damaged_job_output_stores_no_vector_and_loses_no_row(
    tmp_path: Path,
    bedrock_standin: BedrockStandIn,
    buckets: tuple[str, str],
    kind: str,
    message: str,
) -> None:
    settings, resources = publish_bedrock_slice(tmp_path, buckets, BEDROCK_PACKAGES)
    before = main_dataset(settings)
    bedrock_standin.corrupt_next_job_output(kind)

    _, failure = failed_embeddings(resources)
    assert message in failure
    [job] = bedrock_standin.jobs.values()
    assert job.status == "Completed", "the damage is in the output of a job Bedrock completed"
    assert_snapshot_unchanged(before)
    # Not one vector of the damaged output was believed.
    assert assert_no_row_lost_and_vectors_verified(settings, before) == 0

    # The next run must not stay stuck on the damaged job: it gets the vectors, paying once more
    # for that job's texts only.
    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == BEDROCK_PACKAGES
    assert assert_no_row_lost_and_vectors_verified(settings, before) == BEDROCK_PACKAGES
    assert records_submitted(bedrock_standin) == 2 * BEDROCK_PACKAGES


# The local disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: room for a small main dataset (140 KB), not for the 2k sample (2.5 MB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        # A container without CAP_SYS_ADMIN: root, but no mounts.
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_the_disk_filling_up_while_writing_keeps_the_dataset_and_frees_the_space(
    small_disk: Path, tmp_path: Path
) -> None:
    output = small_disk / "out" / "fdnix-data.lancedb"
    small = small_dump(tmp_path / "small.json", count=40)
    with DagsterInstance.ephemeral() as instance:

        def run(listing: Path) -> Any:
            env = {"NIXPKGS_JSON": str(listing), "OUTPUT_PATH": str(output)}
            return materialize(
                [nixpkgs_packages],
                resources=build_resources(load_settings(env)),
                instance=instance,
                raise_on_error=False,
            )

        assert run(small).success
        before = (os.path.realpath(output), rows_of(output))
        full = run(SAMPLE_LISTING)
        assert not full.success
        failure = full.failure_data_for_node("nixpkgs_packages")
        assert failure is not None and failure.error is not None
        assert "No space left on device" in failure.error.to_string() or "ENOSPC" in (
            failure.error.to_string()
        )
        assert (os.path.realpath(output), rows_of(output)) == before
        # The half-written dataset is gone: the next run has the room it had before.
        assert list((small_disk / "out" / ".fdnix-work").glob("*/*")) == []
        again = run(small)
    assert again.success
    assert rows_of(output) == before[1]


def test_a_run_whose_upload_dies_keeps_the_pointer_and_leaves_no_staged_dataset(
    aws_env: str, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    resources = s3_metadata_resources(tmp_path, s3_bucket)
    with DagsterInstance.ephemeral() as instance:
        assert materialize([nixpkgs_packages], resources=resources, instance=instance).success
        direct = resources["dataset_storage"].store("main")
        pointer = direct.read_pointer()
        # The next run's storage talks to S3 through the proxy, which dies on the third PUT.
        storage = DatasetStorage(
            output_path=str(tmp_path / "out" / "fdnix-data.lancedb"),
            output_minified_path=str(tmp_path / "out" / "fdnix.lancedb"),
            artifacts_bucket=s3_bucket,
            s3=S3Resource(region_name="us-east-1", endpoint_url=proxy.endpoint, max_attempts=2),
        )
        resources |= {
            "dataset_storage": storage,
            "dataset_io_manager": DatasetIOManager(storage=storage),
        }
        proxy.add(Fault("PUT", "stop", after=2))
        result = materialize(
            [nixpkgs_packages], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    assert any(line.startswith("stop PUT") for line in proxy.injected)
    assert direct.read_pointer() == pointer
    assert direct.list_snapshots() == [pointer.snapshot_id]
    assert list((tmp_path / "out" / ".fdnix-work").glob("*/*")) == []
