"""Dataset snapshots in S3, through a real moto server over HTTP (conftest's ``moto_endpoint``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from dagster import DagsterInstance, materialize
from dagster_aws.s3 import S3Resource

from fdnix_assets.assets.metadata import nixpkgs_packages
from fdnix_assets.definitions import build_resources
from fdnix_assets.io_managers import DatasetIOManager
from fdnix_assets.resources import DatasetStorage
from fdnix_assets.settings import load_settings
from fdnix_assets.storage import Snapshot, StorageError, tree_listing
from fdnix_assets.storage_s3 import (
    MANIFEST_NAME,
    S3DatasetStore,
    resolve_s3_dataset,
    safe_relative_path,
    transfer_config_for,
)
from fdnix_assets_tests.conftest import TEST_CREDENTIALS, free_port

PREFIX = "snapshots/fdnix-data.lancedb"
DIMENSIONS = 8
WORDS = ["fast", "search", "tool", "image", "editor", "network", "python", "terminal", "music"]


def make_packages_dataset(directory: Path, rows: int = 120, seed: int = 7) -> Path:
    """A small LanceDB ``packages`` table with a vector column and a full-text index."""
    rng = np.random.default_rng(seed)
    descriptions = [
        " ".join(rng.choice(WORDS, size=4)) + f" package number {index}" for index in range(rows)
    ]
    vectors = rng.normal(size=(rows, DIMENSIONS)).astype(np.float32)
    table = pa.table(
        {
            "attr_path": [f"pkgs.package{index}" for index in range(rows)],
            "description": descriptions,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSIONS),
        }
    )
    created = lancedb.connect(str(directory)).create_table("packages", table)
    created.create_index("description", config=lancedb.index.FTS())
    return directory


def make_tree(root: Path, files: int, marker: str = "x") -> Path:
    for index in range(files):
        path = root / "packages.lance" / "data" / f"{index:05d}.lance"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{marker}{index}")
    return root


def answers(uri: str, storage_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Rows, a full-text query and a vector query, as attribute paths in rank order."""
    table = lancedb.connect(uri, storage_options=storage_options or None).open_table("packages")
    query_vector = np.linspace(-1, 1, DIMENSIONS).astype(np.float32)
    return {
        "rows": table.count_rows(),
        "fts": [
            row["attr_path"]
            for row in table.search("editor terminal", query_type="fts")
            .select(["attr_path"])
            .limit(10)
            .to_list()
        ],
        "vector": [
            row["attr_path"]
            for row in table.search(query_vector, query_type="vector")
            .select(["attr_path"])
            .limit(10)
            .to_list()
        ],
    }


def object_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    paginator = client.get_paginator("list_objects_v2")
    return [
        obj["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


@pytest.fixture
def s3_client(aws_env: str) -> Any:
    """The client production uses: dagster-aws's S3Resource, endpoint from the environment."""
    return S3Resource(region_name="us-east-1").get_client()


@pytest.fixture
def store(s3_client: Any, s3_bucket: str) -> S3DatasetStore:
    return S3DatasetStore(
        client=s3_client, bucket=s3_bucket, prefix=PREFIX, dataset="fdnix-data.lancedb"
    )


def test_the_s3_client_honours_the_endpoint_variable(s3_client: Any, aws_env: str) -> None:
    assert s3_client.meta.endpoint_url == aws_env
    assert s3_client.meta.config.retries["mode"] == "standard"


def test_round_trip_of_a_lancedb_dataset(
    store: S3DatasetStore, s3_client: Any, s3_bucket: str, tmp_path: Path, aws_env: str
) -> None:
    staged = make_packages_dataset(tmp_path / "staged")
    expected = answers(str(staged))
    assert expected["rows"] == 120 and len(expected["fts"]) == 10
    files = tree_listing(staged)

    report = store.publish(staged, "20260101T000000000000Z-first")

    snapshot_uri = f"s3://{s3_bucket}/{PREFIX}/snapshots/20260101T000000000000Z-first"
    assert report.snapshot.uri == snapshot_uri
    assert report.file_count == len(files)
    assert report.total_bytes == sum(files.values())
    metadata = report.as_metadata()
    assert metadata["snapshot_uri"] == snapshot_uri
    assert metadata["pointer"] == f"s3://{s3_bucket}/{PREFIX}/latest"
    assert metadata["upload_mb_per_s"] > 0

    pointer = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/latest")["Body"].read()
    )
    manifest_key = f"{PREFIX}/snapshots/20260101T000000000000Z-first/{MANIFEST_NAME}"
    manifest_raw = s3_client.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read()
    assert pointer["snapshot_id"] == "20260101T000000000000Z-first"
    assert pointer["uri"] == snapshot_uri
    assert pointer["manifest_sha256"] == hashlib.sha256(manifest_raw).hexdigest()
    assert (pointer["file_count"], pointer["total_bytes"]) == (len(files), sum(files.values()))
    manifest = json.loads(manifest_raw)
    assert {entry["path"]: entry["size"] for entry in manifest["files"]} == files
    first_file = manifest["files"][0]
    assert (
        first_file["sha256"]
        == hashlib.sha256((staged / first_file["path"]).read_bytes()).hexdigest()
    )

    latest = store.latest()
    assert latest is not None and latest.uri == snapshot_uri
    assert latest.storage_options["endpoint"] == aws_env
    assert latest.storage_options["allow_http"] == "true"
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in repr(latest)
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in json.dumps(metadata)

    assert answers(latest.uri, latest.storage_options) == expected
    # What a reader given only the dataset's S3 location (search --dataset s3://...) opens.
    assert resolve_s3_dataset(f"s3://{s3_bucket}/{PREFIX}", s3_client).uri == snapshot_uri
    assert resolve_s3_dataset(snapshot_uri, s3_client).snapshot_id == "20260101T000000000000Z-first"
    copy = store.checkout(latest, tmp_path / "downloaded")
    assert tree_listing(copy) == files
    assert answers(str(copy)) == expected


def test_a_failed_upload_leaves_the_pointer_on_the_last_complete_snapshot(
    store: S3DatasetStore, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    store.publish(
        make_tree(tmp_path / "good", files=3, marker="good"), "20260101T000000000000Z-good"
    )
    pointer_before = s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/latest")["Body"].read()
    calls = {"count": 0}

    def connection_drops_after_two_uploads(**kwargs: Any) -> None:
        calls["count"] += 1
        if calls["count"] > 2:
            raise EndpointConnectionError(endpoint_url="http://s3.injected-failure")

    s3_client.meta.events.register("before-call.s3.PutObject", connection_drops_after_two_uploads)
    try:
        with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
            store.publish(
                make_tree(tmp_path / "bad", files=8, marker="bad"), "20260102T000000000000Z-bad"
            )
    finally:
        s3_client.meta.events.unregister(
            "before-call.s3.PutObject", connection_drops_after_two_uploads
        )
    assert calls["count"] > 2

    after = s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/latest")["Body"].read()
    assert after == pointer_before
    assert store.list_snapshots() == ["20260101T000000000000Z-good"]
    assert (
        object_keys(s3_client, s3_bucket, f"{PREFIX}/snapshots/20260102T000000000000Z-bad/") == []
    )
    copy = store.checkout(store.require_latest(), tmp_path / "copy")
    assert (copy / "packages.lance" / "data" / "00002.lance").read_text() == "good2"


def test_a_multipart_upload_cut_short_leaves_the_pointer_and_no_open_upload(
    s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    small_parts = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=2
    )
    store = S3DatasetStore(
        s3_client, s3_bucket, PREFIX, "fdnix-data.lancedb", transfer_config=small_parts
    )
    store.publish(
        make_tree(tmp_path / "good", files=2, marker="good"), "20260101T000000000000Z-good"
    )
    staged = make_tree(tmp_path / "big", files=1)
    (staged / "packages.lance" / "data" / "big.lance").write_bytes(os.urandom(16 * 1024 * 1024))
    parts = {"count": 0}

    def fail_after_first_part(**kwargs: Any) -> None:
        parts["count"] += 1
        if parts["count"] > 1:
            raise EndpointConnectionError(endpoint_url="http://s3.injected-failure")

    s3_client.meta.events.register("before-call.s3.UploadPart", fail_after_first_part)
    try:
        with pytest.raises(StorageError):
            store.publish(staged, "20260102T000000000000Z-big")
    finally:
        s3_client.meta.events.unregister("before-call.s3.UploadPart", fail_after_first_part)
    assert parts["count"] > 1, "the big file went up in parts"

    assert store.require_latest().snapshot_id == "20260101T000000000000Z-good"
    assert store.list_snapshots() == ["20260101T000000000000Z-good"]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_throttling_and_server_errors_are_retried(
    store: S3DatasetStore, s3_client: Any, tmp_path: Path
) -> None:
    injected = []

    class _Body:
        def __init__(self, body: bytes) -> None:
            self._body = body

        def stream(self, **kwargs: Any) -> Iterator[bytes]:
            yield self._body

    def answer_slow_down_twice(request: Any, **kwargs: Any) -> AWSResponse | None:
        if len(injected) >= 2:
            return None
        injected.append(request.url)
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))

    s3_client.meta.events.register("before-send.s3.PutObject", answer_slow_down_twice)
    try:
        report = store.publish(
            make_tree(tmp_path / "tree", files=3), "20260101T000000000000Z-retry"
        )
    finally:
        s3_client.meta.events.unregister("before-send.s3.PutObject", answer_slow_down_twice)
    assert len(injected) == 2
    assert store.list_snapshots() == ["20260101T000000000000Z-retry"]
    assert store.require_latest().snapshot_id == report.snapshot.snapshot_id


def test_retention_keeps_the_newest_and_never_the_pointer_s_snapshot(
    s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3DatasetStore(s3_client, s3_bucket, PREFIX, "fdnix-data.lancedb", retention=2)
    ids = [f"2026010{day}T000000000000Z-run{day}" for day in range(1, 5)]
    deleted: list[str] = []
    for day, snapshot_id in enumerate(ids, start=1):
        deleted += store.publish(
            make_tree(tmp_path / f"t{day}", 3, f"v{day}"), snapshot_id
        ).deleted_snapshots
    assert deleted == ids[:2]
    assert store.list_snapshots() == ids[2:]
    for gone in ids[:2]:
        assert object_keys(s3_client, s3_bucket, f"{PREFIX}/snapshots/{gone}/") == []

    # Roll back to the older snapshot, then shrink retention: the pointer's snapshot stays.
    store.point_to(ids[2])
    store.retention = 1
    assert store.prune() == []
    assert store.list_snapshots() == ids[2:]
    assert store.require_latest().snapshot_id == ids[2]

    # An upload abandoned long ago (no manifest) is removed; a recent one may still be running.
    dead = "20200101T000000000000Z-dead"
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/snapshots/{dead}/x", Body=b"x")
    recent_partial = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}000000Z-live"
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/snapshots/{recent_partial}/x", Body=b"x")
    assert store.prune() == [dead]
    assert object_keys(s3_client, s3_bucket, f"{PREFIX}/snapshots/{dead}/") == []
    assert object_keys(s3_client, s3_bucket, f"{PREFIX}/snapshots/{recent_partial}/") != []


def test_more_than_a_thousand_keys_are_listed_downloaded_and_deleted(
    s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3DatasetStore(s3_client, s3_bucket, PREFIX, "fdnix-data.lancedb", retention=1)
    staged = make_tree(tmp_path / "many", files=1050)
    report = store.publish(staged, "20260101T000000000000Z-many")
    assert report.file_count == 1050
    assert (
        len(object_keys(s3_client, s3_bucket, f"{PREFIX}/snapshots/20260101T000000000000Z-many/"))
        == 1051
    )

    copy = store.checkout(store.require_latest(), tmp_path / "copy")
    assert tree_listing(copy) == tree_listing(staged)

    store.publish(make_tree(tmp_path / "next", files=2), "20260102T000000000000Z-next")
    assert (
        object_keys(s3_client, s3_bucket, f"{PREFIX}/snapshots/20260101T000000000000Z-many/") == []
    )
    assert store.list_snapshots() == ["20260102T000000000000Z-next"]


@pytest.mark.parametrize(
    "relative", ["../../evil", "/absolute/evil", "packages.lance\\..\\..\\evil", "a//b"]
)
def test_a_key_escaping_the_target_directory_is_refused_by_name(
    store: S3DatasetStore, s3_client: Any, s3_bucket: str, tmp_path: Path, relative: str
) -> None:
    report = store.publish(make_tree(tmp_path / "tree", files=2), "20260101T000000000000Z-ok")
    key = f"{PREFIX}/snapshots/20260101T000000000000Z-ok/{relative}"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"owned")
    target = tmp_path / "checkouts" / "copy"

    with pytest.raises(StorageError) as refused:
        store.checkout(report.snapshot, target)
    assert f"s3://{s3_bucket}/{key}" in str(refused.value)
    assert not target.exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "checkouts" / "evil").exists()


def test_a_snapshot_changed_after_publishing_is_refused(
    store: S3DatasetStore, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    report = store.publish(make_tree(tmp_path / "tree", files=2), "20260101T000000000000Z-ok")
    data_key = f"{PREFIX}/snapshots/20260101T000000000000Z-ok/packages.lance/data/00001.lance"
    s3_client.put_object(Bucket=s3_bucket, Key=data_key, Body=b"X1")  # same size, new bytes
    with pytest.raises(StorageError, match=r"00001\.lance does not match the sha256"):
        store.checkout(report.snapshot, tmp_path / "copy")

    manifest_key = f"{PREFIX}/snapshots/20260101T000000000000Z-ok/{MANIFEST_NAME}"
    manifest = s3_client.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read()
    s3_client.put_object(Bucket=s3_bucket, Key=manifest_key, Body=manifest + b"\n")
    with pytest.raises(StorageError, match="does not match the sha256 the pointer"):
        store.checkout(report.snapshot, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_an_s3_location_without_a_dataset_is_named(s3_client: Any, s3_bucket: str) -> None:
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}/nothing/here holds no dataset"):
        resolve_s3_dataset(f"s3://{s3_bucket}/nothing/here", s3_client)
    with pytest.raises(StorageError, match="not an s3://"):
        resolve_s3_dataset("https://example.com/x", s3_client)


def test_safe_relative_paths_are_accepted(tmp_path: Path) -> None:
    assert safe_relative_path("packages.lance/data/1.lance", "k", "b", tmp_path) == (
        "packages.lance/data/1.lance"
    )
    with pytest.raises(StorageError, match="'C:/windows'"):
        safe_relative_path("C:/windows", "k", "b", tmp_path)


def test_big_files_split_into_about_one_part_per_connection() -> None:
    mib = 1024 * 1024
    big = transfer_config_for(550 * mib)
    assert big.multipart_chunksize == 55 * mib and big.max_concurrency == 10
    assert transfer_config_for(20 * mib).multipart_chunksize == 16 * mib
    assert transfer_config_for(20 * mib).multipart_threshold == 32 * mib
    assert transfer_config_for(100_000 * mib).multipart_chunksize == 256 * mib


def test_a_missing_bucket_is_named(s3_client: Any, tmp_path: Path) -> None:
    store = S3DatasetStore(s3_client, "fdnix-no-such-bucket", PREFIX, "fdnix-data.lancedb")
    with pytest.raises(StorageError, match="bucket 'fdnix-no-such-bucket' does not exist") as error:
        store.latest()
    assert PREFIX in str(error.value)
    with pytest.raises(StorageError, match="fdnix-no-such-bucket"):
        store.publish(make_tree(tmp_path / "tree", files=1), "20260101T000000000000Z-x")


@pytest.fixture
def authenticating_moto(tmp_path: Path) -> Iterator[str]:
    """A second moto server that checks credentials (no IAM user exists, so all are bad)."""
    port = free_port()
    env = os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        probe = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        deadline = time.monotonic() + 30
        while True:
            try:
                probe.list_buckets()
            except Exception as error:  # not up yet, or up and refusing us
                if "InvalidClientTokenId" in str(error) or "InvalidAccessKeyId" in str(error):
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            else:
                break
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_bad_credentials_give_a_clear_error_without_secrets(
    aws_env: str, authenticating_moto: str
) -> None:
    client = S3Resource(region_name="us-east-1", endpoint_url=authenticating_moto).get_client()
    store = S3DatasetStore(client, "fdnix-artifacts", PREFIX, "fdnix-data.lancedb")
    with pytest.raises(StorageError, match="S3 refused the request") as error:
        store.latest()
    message = str(error.value)
    assert "fdnix-artifacts" in message and PREFIX in message
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in message
    assert TEST_CREDENTIALS["AWS_SESSION_TOKEN"] not in message


def test_a_dataset_uploaded_without_snapshots_is_read_as_unversioned(
    store: S3DatasetStore, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    legacy = make_packages_dataset(tmp_path / "legacy", rows=30)
    for relative in tree_listing(legacy):
        s3_client.upload_file(str(legacy / relative), s3_bucket, f"{PREFIX}/{relative}")

    snapshot = store.latest()
    assert snapshot is not None and snapshot.snapshot_id == "unversioned"
    assert snapshot.uri == f"s3://{s3_bucket}/{PREFIX}"
    copy = store.checkout(snapshot, tmp_path / "copy")
    assert tree_listing(copy) == tree_listing(legacy)

    store.publish(make_tree(tmp_path / "new", files=1), "20260101T000000000000Z-new")
    assert store.require_latest().snapshot_id == "20260101T000000000000Z-new"


def test_metadata_job_publishes_snapshots_and_moves_the_pointer(
    aws_env: str, s3_bucket: str, sample_listing: Path, tmp_path: Path
) -> None:
    settings = load_settings(
        {
            "NIXPKGS_JSON": str(sample_listing),
            "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
            "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
            "ARTIFACTS_BUCKET": s3_bucket,
            "AWS_REGION": "us-east-1",
            "LANCEDB_PATH": str(tmp_path / "embedding" / "fdnix-data.lancedb"),
        }
    )
    resources = build_resources(settings)
    storage = resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage) and isinstance(
        resources["dataset_io_manager"], DatasetIOManager
    )
    client = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")

    snapshot_ids = []
    with DagsterInstance.ephemeral() as instance:
        for _ in range(2):
            result = materialize([nixpkgs_packages], resources=resources, instance=instance)
            assert result.success
            [materialization] = result.asset_materializations_for_node("nixpkgs_packages")
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            snapshot_ids.append(metadata["snapshot_id"])
            assert metadata["snapshot_uri"].startswith(f"s3://{s3_bucket}/{PREFIX}/snapshots/")
            assert metadata["file_count"] > 0 and metadata["dataset_bytes"] > 0
            assert metadata["upload_seconds"] > 0 and metadata["upload_mb_per_s"] > 0
            assert metadata["rows"] == metadata["dagster/row_count"] > 1900

    store = storage.store("main")
    assert store.list_snapshots() == sorted(snapshot_ids)
    assert snapshot_ids[0] != snapshot_ids[1]
    pointer = json.loads(client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/latest")["Body"].read())
    assert pointer["snapshot_id"] == snapshot_ids[1] == max(snapshot_ids)
    assert not (tmp_path / "out" / "fdnix-data.lancedb").exists(), "S3 mode writes no local output"

    # LANCEDB_PATH: missing, so the latest snapshot is downloaded there; then used as it is.
    local_path = tmp_path / "embedding" / "fdnix-data.lancedb"
    copy = storage.local_copy("main")
    assert copy.downloaded and copy.path == local_path
    assert isinstance(copy.snapshot, Snapshot) and copy.snapshot.snapshot_id == snapshot_ids[1]
    rows = lancedb.connect(str(local_path)).open_table("packages").count_rows()
    assert rows == metadata["rows"]
    again = storage.local_copy("main")
    assert not again.downloaded and again.snapshot is None
