"""Dataset snapshots in S3: immutable snapshot prefixes plus a small ``latest`` pointer object.

Layout under a dataset's key prefix (``LANCEDB_DATA_KEY`` or ``LANCEDB_MINIFIED_KEY``)::

    <prefix>/snapshots/<snapshot id>/<relative file path>   the LanceDB directory tree
    <prefix>/snapshots/<snapshot id>/_fdnix_manifest.json   every file with size and sha256
    <prefix>/latest                                         the pointer (JSON, below)

Publishing uploads every file of a finished tree in parallel, lists the snapshot prefix and
checks that every file arrived with its size, writes the manifest last, and only then
overwrites the pointer. A snapshot without a manifest is incomplete and is never pointed to;
a run that dies mid-upload leaves the pointer on the last complete snapshot. LanceDB ignores
the manifest (it only opens ``*.lance`` directories), so a snapshot prefix is itself a
LanceDB database URI: ``s3://<bucket>/<prefix>/snapshots/<id>``.

The pointer::

    {"format": "fdnix-snapshot-pointer/1", "dataset": "fdnix-data.lancedb",
     "snapshot_id": "20261125T031500123456Z-1a2b3c4d",
     "uri": "s3://<bucket>/<prefix>/snapshots/20261125T031500123456Z-1a2b3c4d",
     "manifest_key": "<prefix>/snapshots/<id>/_fdnix_manifest.json",
     "manifest_sha256": "<sha256 of the manifest bytes>",
     "file_count": 42, "total_bytes": 550000000, "created_at": "2026-11-25T03:15:09+00:00"}

S3 overwrites are atomic and strongly consistent, so readers see the old pointer or the new
one. A publish moves the pointer only forward (see :mod:`fdnix_assets.storage`): it reads the
pointer and its ETag, leaves it when it names a newer snapshot, and otherwise overwrites it
with a conditional PUT (If-Match the ETag read, or If-None-Match ``*`` when there is none),
reading again when another publish got in between. Both snapshots of two racing publishes
are complete either way.

A prefix holding LanceDB tables directly (``<prefix>/packages.lance/...``, as the
original indexer uploaded them) and no pointer is read as the ``unversioned`` snapshot.

Transfers run 10 at a time (the client's connection pool): uploads through boto3's transfer
manager, files above 32 MiB in multipart parts sized so the largest file splits into about
10 parts (16 to 256 MiB); downloads of small files as plain GETs on a thread pool, big ones
as parallel ranged GETs through the transfer manager. Throttling and 5xx answers are retried
with exponential backoff by the client's retry configuration: the client from dagster-aws's
``S3Resource`` uses botocore's ``standard`` mode with ``max_attempts`` (5 by default). S3
checks each upload against the CRC32 checksum botocore sends with it; checkouts check sizes
and the manifest's sha256 of every file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import boto3.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.subscribers import BaseSubscriber

from fdnix_assets.storage import (
    ABANDONED_AFTER,
    DEFAULT_RETENTION,
    UNVERSIONED_SNAPSHOT_ID,
    DatasetStore,
    PublishReport,
    Snapshot,
    StorageError,
    check_snapshot_id,
    describe_listing_difference,
    file_sha256,
    replace_directory,
    snapshot_created_at,
    staged_files,
    tree_listing,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_fdnix_manifest.json"
POINTER_NAME = "latest"
SNAPSHOTS_DIR = "snapshots"
POINTER_FORMAT = "fdnix-snapshot-pointer/1"
MANIFEST_FORMAT = "fdnix-snapshot-manifest/1"
DELETE_BATCH_SIZE = 1000  # the most keys one DeleteObjects request takes
STREAM_ATTEMPTS = 3
POINTER_WRITE_ATTEMPTS = 10
# A conditional write that lost: the object changed (412), appeared (412), disappeared (404)
# or was being written by another request (409).
_CONDITION_FAILED = {
    "PreconditionFailed",
    "412",
    "ConditionalRequestConflict",
    "409",
    "NoSuchKey",
    "404",
}
# An S3-compatible server without conditional writes.
_CONDITION_UNSUPPORTED = {"NotImplemented", "501"}

MIB = 1024 * 1024
# Concurrency stays at the client's default connection pool size (10): more threads than
# pooled connections only churn connections.
TRANSFER_CONCURRENCY = 10
MIN_PART_BYTES = 16 * MIB
MAX_PART_BYTES = 256 * MIB
SINGLE_REQUEST_BYTES = 32 * MIB


def transfer_config_for(largest_file_bytes: int) -> TransferConfig:
    """Parts sized so the largest file splits into about one part per concurrent transfer.

    Fewer, larger parts mean fewer requests (each one costs a round trip, and S3 charges per
    request) while every connection still has a part to move; 16 MiB parts are the floor.
    """
    per_connection = -(-largest_file_bytes // TRANSFER_CONCURRENCY)
    part = min(MAX_PART_BYTES, max(MIN_PART_BYTES, -(-per_connection // MIB) * MIB))
    return TransferConfig(
        multipart_threshold=max(SINGLE_REQUEST_BYTES, part),
        multipart_chunksize=part,
        max_concurrency=TRANSFER_CONCURRENCY,
        use_threads=True,
        # The CRT client, when awscrt is installed, would bypass this client's retry config.
        preferred_transfer_client="classic",
    )


_CREDENTIAL_ERRORS = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "403",
}


@dataclass(frozen=True)
class SnapshotPointer:
    """What ``<prefix>/latest`` says: the complete snapshot readers should open."""

    dataset: str
    snapshot_id: str
    uri: str
    manifest_key: str
    manifest_sha256: str
    file_count: int
    total_bytes: int
    created_at: str

    def to_json(self) -> bytes:
        return json.dumps({"format": POINTER_FORMAT, **asdict(self)}, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> SnapshotPointer:
        try:
            document = json.loads(raw)
            if document.get("format") != POINTER_FORMAT:
                raise ValueError(f"format is {document.get('format')!r}, not {POINTER_FORMAT!r}")
            pointer = cls(
                dataset=str(document["dataset"]),
                snapshot_id=str(document["snapshot_id"]),
                uri=str(document["uri"]),
                manifest_key=str(document["manifest_key"]),
                manifest_sha256=str(document["manifest_sha256"]),
                file_count=int(document["file_count"]),
                total_bytes=int(document["total_bytes"]),
                created_at=str(document["created_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise StorageError(f"the snapshot pointer {where} is not valid: {error}") from None
        check_snapshot_id(pointer.snapshot_id, f"the snapshot pointer {where}")
        return pointer


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    size: int
    sha256: str


class _KnownSize(BaseSubscriber):
    """Tells the transfer manager an object's size, sparing a HEAD request per download."""

    def __init__(self, size: int) -> None:
        self._size = size

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)


# How often an upload reports its progress, and how often it looks (only when it reports).
UPLOAD_PROGRESS_INTERVAL_SECONDS = 10.0
_UPLOAD_POLL_SECONDS = 0.05
UploadProgress = Callable[[int, int, float], None]


class _UploadedBytes(BaseSubscriber):
    """Counts the bytes every upload of a snapshot has sent so far (from the transfer threads)."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        with self._lock:
            self.total += bytes_transferred


class S3DatasetStore(DatasetStore):
    """Snapshots of one dataset under ``s3://<bucket>/<prefix>/``.

    ``upload_progress(bytes_sent, bytes_total, seconds)`` is called every
    ``progress_interval`` seconds while a snapshot uploads, and once when it is done, so a
    long upload shows in the run's log.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        dataset: str,
        region: str | None = None,
        retention: int = DEFAULT_RETENTION,
        transfer_config: TransferConfig | None = None,
        verify_checksums: bool = True,
        upload_progress: UploadProgress | None = None,
        progress_interval: float = UPLOAD_PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(dataset, retention)
        self.upload_progress = upload_progress
        self.progress_interval = progress_interval
        stripped = prefix.strip("/")
        if not stripped:
            raise StorageError(f"the S3 key prefix of {dataset} in bucket {bucket} is empty")
        self.client = client
        self.bucket = bucket
        self.prefix = stripped
        self.region = region or client.meta.region_name or "us-east-1"
        self.transfer_config = transfer_config
        self.verify_checksums = verify_checksums

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.pointer_key}"

    @property
    def pointer_key(self) -> str:
        return f"{self.prefix}/{POINTER_NAME}"

    @property
    def snapshots_prefix(self) -> str:
        return f"{self.prefix}/{SNAPSHOTS_DIR}/"

    def snapshot_prefix(self, snapshot_id: str) -> str:
        return f"{self.snapshots_prefix}{snapshot_id}/"

    def snapshot_uri(self, snapshot_id: str) -> str:
        return f"s3://{self.bucket}/{self.snapshot_prefix(snapshot_id).rstrip('/')}"

    def manifest_key(self, snapshot_id: str) -> str:
        return f"{self.snapshot_prefix(snapshot_id)}{MANIFEST_NAME}"

    def snapshot(self, snapshot_id: str) -> Snapshot:
        """A snapshot by id, with what LanceDB needs to open it from S3."""
        if snapshot_id == UNVERSIONED_SNAPSHOT_ID:
            uri = f"s3://{self.bucket}/{self.prefix}"
        else:
            uri = self.snapshot_uri(check_snapshot_id(snapshot_id, self.location))
        return Snapshot(self.dataset, snapshot_id, uri, self.lance_storage_options())

    def lance_storage_options(self) -> dict[str, str]:
        """LanceDB ``storage_options`` matching this client: endpoint, region, credentials.

        Secrets in here must never be logged; :class:`Snapshot` keeps them out of its repr.
        """
        options = {"region": self.region}
        endpoint = self.client.meta.endpoint_url
        host = urlparse(endpoint).hostname or ""
        # A custom endpoint (AWS_ENDPOINT_URL_S3: MinIO, moto, ...) must be passed on;
        # AWS's own endpoints LanceDB derives from the region.
        if endpoint and not host.endswith(".amazonaws.com"):
            options["endpoint"] = endpoint.rstrip("/")
            if endpoint.startswith("http://"):
                options["allow_http"] = "true"
        # The client's resolved credentials (profile, explicit keys or role), so LanceDB
        # signs exactly as this client does; None for an unsigned client.
        get_credentials = getattr(self.client, "_get_credentials", None)
        credentials = (
            get_credentials() if get_credentials else boto3.session.Session().get_credentials()
        )
        if credentials is None:
            options["skip_signature"] = "true"
            return options
        frozen = credentials.get_frozen_credentials()
        options["aws_access_key_id"] = frozen.access_key
        options["aws_secret_access_key"] = frozen.secret_key
        if frozen.token:
            options["aws_session_token"] = frozen.token
        return options

    def read_pointer(self) -> SnapshotPointer | None:
        """The pointer object, or None when none was written yet."""
        return self._pointer_and_etag()[0]

    def _pointer_and_etag(self) -> tuple[SnapshotPointer | None, str | None]:
        """The pointer and the ETag of the object it was read from (None, None: no pointer)."""
        with self._s3_errors(f"reading the snapshot pointer {self.location}"):
            try:
                raw, etag = self._get_object(self.pointer_key)
            except ClientError as error:
                if _error_code(error) in ("NoSuchKey", "404"):
                    return None, None
                raise
        return SnapshotPointer.from_json(raw, self.location), etag

    def latest(self) -> Snapshot | None:
        pointer = self.read_pointer()
        if pointer is not None:
            return self.snapshot(pointer.snapshot_id)
        if self._holds_unversioned_dataset():
            return self.snapshot(UNVERSIONED_SNAPSHOT_ID)
        return None

    def list_snapshots(self) -> list[str]:
        return sorted(
            snapshot_id
            for snapshot_id, keys in self._keys_by_snapshot().items()
            if MANIFEST_NAME in keys
        )

    def publish(self, staged: Path, snapshot_id: str) -> PublishReport:
        started = time.perf_counter()
        files = staged_files(
            staged, self.dataset, snapshot_id, f"publishing {staged} to {self.location}"
        )
        if MANIFEST_NAME in files:
            raise StorageError(f"{staged} holds {MANIFEST_NAME}, a name the snapshots reserve")
        prefix = self.snapshot_prefix(snapshot_id)
        if self._list_objects(prefix, max_keys=1):
            raise StorageError(f"snapshot {snapshot_id} already exists at {self.location}")

        manifest_written = False
        try:
            checksums = {path: file_sha256(staged / path) for path in files}
            upload_started = time.perf_counter()
            self._upload_tree(staged, files, prefix, snapshot_id)
            upload_seconds = time.perf_counter() - upload_started
            self._verify_uploaded(prefix, files, snapshot_id)
            manifest = self._manifest_bytes(snapshot_id, files, checksums)
            with self._s3_errors(f"writing the manifest of snapshot {snapshot_id}"):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.manifest_key(snapshot_id),
                    Body=manifest,
                    ContentType="application/json",
                )
            manifest_written = True
            pointer = SnapshotPointer(
                dataset=self.dataset,
                snapshot_id=snapshot_id,
                uri=self.snapshot_uri(snapshot_id),
                manifest_key=self.manifest_key(snapshot_id),
                manifest_sha256=hashlib.sha256(manifest).hexdigest(),
                file_count=len(files),
                total_bytes=sum(files.values()),
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            superseded_by = self._advance_pointer(pointer)
        except BaseException:
            # Before the manifest exists nothing can point here: remove what was uploaded.
            # After it, the pointer write may have landed without an answer, so the complete
            # snapshot stays and retention deals with it.
            if not manifest_written:
                self._discard_incomplete(snapshot_id)
            raise
        deleted = self.prune()
        return PublishReport(
            snapshot=self.snapshot(snapshot_id),
            file_count=len(files),
            total_bytes=sum(files.values()),
            seconds=time.perf_counter() - started,
            deleted_snapshots=deleted,
            upload_seconds=upload_seconds,
            pointer=self.location,
            manifest_sha256=pointer.manifest_sha256,
            superseded_by=superseded_by or "",
        )

    def point_to(self, snapshot_id: str) -> Snapshot:
        check_snapshot_id(snapshot_id, f"moving {self.location}")
        manifest_raw = self._read_manifest_bytes(snapshot_id)
        if manifest_raw is None:
            raise StorageError(
                f"{self.dataset} has no complete snapshot {snapshot_id!r} under "
                f"s3://{self.bucket}/{self.snapshots_prefix}"
            )
        entries = _parse_manifest(manifest_raw, self.manifest_key(snapshot_id))
        self._write_pointer(
            SnapshotPointer(
                dataset=self.dataset,
                snapshot_id=snapshot_id,
                uri=self.snapshot_uri(snapshot_id),
                manifest_key=self.manifest_key(snapshot_id),
                manifest_sha256=hashlib.sha256(manifest_raw).hexdigest(),
                file_count=len(entries),
                total_bytes=sum(entry.size for entry in entries),
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        )
        return self.snapshot(snapshot_id)

    def prune(self) -> list[str]:
        by_snapshot = self._keys_by_snapshot()
        complete = sorted(sid for sid, keys in by_snapshot.items() if MANIFEST_NAME in keys)
        pointer = self.read_pointer()
        protected = {pointer.snapshot_id} if pointer else set()
        doomed = [
            snapshot_id
            for snapshot_id in complete[: max(0, len(complete) - self.retention)]
            if snapshot_id not in protected
        ]
        abandoned_before = datetime.now(UTC) - ABANDONED_AFTER
        abandoned = [
            snapshot_id
            for snapshot_id, keys in by_snapshot.items()
            if MANIFEST_NAME not in keys
            and snapshot_id not in protected
            and (created := snapshot_created_at(snapshot_id)) is not None
            and created < abandoned_before
        ]
        if not doomed and not abandoned:
            return []
        # Manifests go first: a deletion cut short must not leave a snapshot that still
        # looks complete while files are missing.
        manifests = [self.manifest_key(snapshot_id) for snapshot_id in doomed]
        rest = [
            f"{self.snapshot_prefix(snapshot_id)}{relative}"
            for snapshot_id in doomed + abandoned
            for relative in by_snapshot[snapshot_id]
            if relative != MANIFEST_NAME
        ]
        self._delete_keys(manifests)
        self._delete_keys(rest)
        return doomed + sorted(abandoned)

    def checkout(self, snapshot: Snapshot, target: Path) -> Path:
        """Downloads ``snapshot`` to ``target`` (replaced only once the copy is complete).

        Every key is checked before anything is written: a key that would land outside
        ``target`` (``..``, an absolute path, a backslash) stops the checkout and is named.
        Sizes, and sha256 checksums when the snapshot has a manifest, are verified.
        """
        base = (
            f"{self.prefix}/"
            if snapshot.snapshot_id == UNVERSIONED_SNAPSHOT_ID
            else self.snapshot_prefix(check_snapshot_id(snapshot.snapshot_id, self.location))
        )
        listed = {obj["Key"]: obj["Size"] for obj in self._list_objects(base)}
        if snapshot.snapshot_id == UNVERSIONED_SNAPSHOT_ID:
            listed = {
                key: size
                for key, size in listed.items()
                if not key.startswith(self.snapshots_prefix) and key != self.pointer_key
            }
        target = target.absolute()
        files: dict[str, int] = {}
        for key, size in listed.items():
            relative = safe_relative_path(key[len(base) :], key, self.bucket, target)
            if relative != MANIFEST_NAME:
                files[relative] = size
        if not files:
            raise StorageError(f"snapshot {snapshot.uri} holds no files")

        checksums: dict[str, str] = {}
        if f"{base}{MANIFEST_NAME}" in listed:
            manifest_where = f"s3://{self.bucket}/{base}{MANIFEST_NAME}"
            manifest_raw = self._read_manifest_bytes(snapshot.snapshot_id)
            if manifest_raw is None:
                raise StorageError(f"{manifest_where} disappeared while checking out")
            pointer = self.read_pointer()
            if (
                pointer is not None
                and pointer.snapshot_id == snapshot.snapshot_id
                and pointer.manifest_sha256 != hashlib.sha256(manifest_raw).hexdigest()
            ):
                raise StorageError(
                    f"{manifest_where} does not match the sha256 the pointer {self.location} "
                    "records: the snapshot was changed after it was published"
                )
            entries = _parse_manifest(manifest_raw, manifest_where)
            expected = {entry.path: entry.size for entry in entries}
            if expected != files:
                raise StorageError(
                    f"snapshot {snapshot.uri} does not match its manifest: "
                    + describe_listing_difference(expected, files)
                )
            checksums = {entry.path: entry.sha256 for entry in entries}

        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            self._download_tree(base, files, staging, snapshot.uri)
            downloaded = tree_listing(staging)
            if downloaded != files:
                raise StorageError(
                    f"download of {snapshot.uri} to {target} is incomplete: "
                    + describe_listing_difference(files, downloaded)
                )
            if self.verify_checksums:
                for relative, checksum in checksums.items():
                    if file_sha256(staging / relative) != checksum:
                        raise StorageError(
                            f"s3://{self.bucket}/{base}{relative} does not match the sha256 "
                            "its snapshot manifest records"
                        )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_directory(staging, target)
        return target

    def _upload_tree(
        self, staged: Path, files: dict[str, int], prefix: str, snapshot_id: str
    ) -> None:
        with (
            self._s3_errors(f"uploading snapshot {snapshot_id}"),
            create_transfer_manager(self.client, self._transfer_config(files)) as manager,
        ):
            sent = _UploadedBytes()
            futures = [
                manager.upload(
                    str(staged / relative),
                    self.bucket,
                    f"{prefix}{relative}",
                    subscribers=[sent],
                )
                for relative in files
            ]
            if self.upload_progress is not None:
                self._report_progress(futures, sent, sum(files.values()), self.upload_progress)
            for future in futures:
                future.result()

    def _report_progress(
        self, futures: list[Any], sent: _UploadedBytes, total: int, report: UploadProgress
    ) -> None:
        started = last = time.monotonic()
        while not all(future.done() for future in futures):
            time.sleep(_UPLOAD_POLL_SECONDS)
            now = time.monotonic()
            if now - last >= self.progress_interval:
                report(sent.total, total, now - started)
                last = now
        report(sent.total, total, time.monotonic() - started)

    def _download_tree(self, base: str, files: dict[str, int], staging: Path, uri: str) -> None:
        for directory in {(staging / relative).parent for relative in files}:
            directory.mkdir(parents=True, exist_ok=True)
        config = self._transfer_config(files)
        threshold = config.multipart_threshold
        small = [relative for relative, size in files.items() if size < threshold]
        large = [relative for relative, size in files.items() if size >= threshold]
        with self._s3_errors(f"downloading {uri}"):
            # The transfer manager costs about twice a plain GET per small file (temp file,
            # queue hand-offs); LanceDB trees hold many small files, so those go straight.
            with ThreadPoolExecutor(max_workers=config.max_concurrency) as pool:
                futures = [
                    pool.submit(self._download_small, f"{base}{relative}", staging / relative)
                    for relative in small
                ]
                _wait_all(futures, on_failure=lambda: pool.shutdown(cancel_futures=True))
            if large:
                with create_transfer_manager(self.client, config) as manager:
                    transfers = [
                        manager.download(
                            self.bucket,
                            f"{base}{relative}",
                            str(staging / relative),
                            subscribers=[_KnownSize(files[relative])],
                        )
                        for relative in large
                    ]
                    for transfer in transfers:
                        transfer.result()

    def _transfer_config(self, files: dict[str, int]) -> TransferConfig:
        if self.transfer_config is not None:
            return self.transfer_config
        return transfer_config_for(max(files.values(), default=0))

    def _download_small(self, key: str, destination: Path) -> None:
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                with destination.open("wb") as handle:
                    shutil.copyfileobj(body, handle, MIB)
                return
            except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError):
                # botocore retries requests, not a body stream that breaks half way.
                if attempt == STREAM_ATTEMPTS:
                    raise

    def _get_object(self, key: str) -> tuple[bytes, str]:
        """A small object's bytes and ETag; a body that breaks half way is fetched again."""
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                return response["Body"].read(), str(response["ETag"])
            except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError):
                # botocore retries requests, not a body stream that breaks half way.
                if attempt == STREAM_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _verify_uploaded(self, prefix: str, files: dict[str, int], snapshot_id: str) -> None:
        found = {
            obj["Key"][len(prefix) :]: obj["Size"]
            for obj in self._list_objects(prefix)
            if obj["Key"] != f"{prefix}{MANIFEST_NAME}"
        }
        if found != files:
            raise StorageError(
                f"snapshot {snapshot_id} at s3://{self.bucket}/{prefix} did not verify after "
                "upload: " + describe_listing_difference(files, found)
            )

    def _manifest_bytes(
        self, snapshot_id: str, files: dict[str, int], checksums: dict[str, str]
    ) -> bytes:
        document = {
            "format": MANIFEST_FORMAT,
            "dataset": self.dataset,
            "snapshot_id": snapshot_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "file_count": len(files),
            "total_bytes": sum(files.values()),
            "files": [
                {"path": path, "size": size, "sha256": checksums[path]}
                for path, size in sorted(files.items())
            ],
        }
        return json.dumps(document, indent=1).encode()

    def _read_manifest_bytes(self, snapshot_id: str) -> bytes | None:
        key = self.manifest_key(snapshot_id)
        with self._s3_errors(f"reading s3://{self.bucket}/{key}"):
            try:
                return self._get_object(key)[0]
            except ClientError as error:
                if _error_code(error) in ("NoSuchKey", "404"):
                    return None
                raise

    def _advance_pointer(self, pointer: SnapshotPointer) -> str | None:
        """Writes ``pointer`` unless the current one names a newer snapshot; returns that one.

        Compare-and-set: the write is conditional on the pointer object being the one read.
        """
        for _ in range(POINTER_WRITE_ATTEMPTS):
            current, etag = self._pointer_and_etag()
            if current is not None and current.snapshot_id > pointer.snapshot_id:
                return current.snapshot_id
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            with self._s3_errors(f"moving the snapshot pointer {self.location}"):
                try:
                    self._put_pointer(pointer, **condition)
                    return None
                except ClientError as error:
                    code = _error_code(error)
                    if code in _CONDITION_UNSUPPORTED:
                        # Still forward-only; only the read-to-write gap is unguarded.
                        logger.warning(
                            "%s does not support conditional writes; moving the pointer "
                            "unconditionally",
                            self.location,
                        )
                        self._write_pointer(pointer)
                        return None
                    # Another publish moved the pointer since it was read: read it again.
                    if code not in _CONDITION_FAILED:
                        raise
        raise StorageError(
            f"moving the snapshot pointer {self.location} to {pointer.snapshot_id} failed: "
            f"other publishes moved it {POINTER_WRITE_ATTEMPTS} times in between"
        )

    def _write_pointer(self, pointer: SnapshotPointer) -> None:
        with self._s3_errors(f"moving the snapshot pointer {self.location}"):
            self._put_pointer(pointer)

    def _put_pointer(self, pointer: SnapshotPointer, **condition: str) -> None:
        """One PUT of the pointer object; ``condition`` is IfMatch / IfNoneMatch, if any."""
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.pointer_key,
            Body=pointer.to_json(),
            ContentType="application/json",
            CacheControl="no-cache",
            **condition,
        )

    def _holds_unversioned_dataset(self) -> bool:
        with self._s3_errors(f"listing s3://{self.bucket}/{self.prefix}/"):
            response = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/", Delimiter="/"
            )
        return any(
            common["Prefix"].endswith(".lance/") for common in response.get("CommonPrefixes", [])
        )

    def _keys_by_snapshot(self) -> dict[str, set[str]]:
        """Snapshot id -> relative paths of its objects, from one paginated listing."""
        by_snapshot: dict[str, set[str]] = {}
        for obj in self._list_objects(self.snapshots_prefix):
            snapshot_id, _, relative = obj["Key"][len(self.snapshots_prefix) :].partition("/")
            by_snapshot.setdefault(snapshot_id, set()).add(relative)
        return by_snapshot

    def _list_objects(self, prefix: str, max_keys: int | None = None) -> list[dict[str, Any]]:
        """Every object under ``prefix``, across as many 1,000-key pages as it takes."""
        objects: list[dict[str, Any]] = []
        with self._s3_errors(f"listing s3://{self.bucket}/{prefix}"):
            paginator = self.client.get_paginator("list_objects_v2")
            pagination = {"MaxItems": max_keys} if max_keys else {}
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig=pagination
            ):
                objects.extend(page.get("Contents", []))
        return objects

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH_SIZE):
            batch = keys[start : start + DELETE_BATCH_SIZE]
            with self._s3_errors(f"deleting old snapshots under s3://{self.bucket}/{self.prefix}"):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = response.get("Errors", [])
            if errors:
                shown = ", ".join(f"{e.get('Key')} ({e.get('Code')})" for e in errors[:5])
                raise StorageError(
                    f"S3 refused to delete {len(errors)} keys in bucket {self.bucket}: {shown}"
                )

    def _discard_incomplete(self, snapshot_id: str) -> None:
        """Best effort: the next publish's retention removes what is left after a long grace."""
        try:
            keys = [obj["Key"] for obj in self._list_objects(self.snapshot_prefix(snapshot_id))]
            self._delete_keys(keys)
        except (StorageError, BotoCoreError, ClientError) as error:
            logger.warning(
                "could not remove the incomplete snapshot %s under s3://%s/%s: %s",
                snapshot_id,
                self.bucket,
                self.snapshots_prefix,
                error,
            )

    @contextmanager
    def _s3_errors(self, action: str) -> Iterator[None]:
        """Turns botocore errors into a :class:`StorageError` naming the bucket and prefix."""
        where = f"s3://{self.bucket}/{self.prefix}/"
        try:
            yield
        except ClientError as error:
            code = _error_code(error)
            message = error.response.get("Error", {}).get("Message", "")
            if code == "NoSuchBucket":
                raise StorageError(
                    f"{action} failed: bucket {self.bucket!r} does not exist (dataset "
                    f"{self.dataset} at {where}); check ARTIFACTS_BUCKET and the S3 endpoint"
                ) from None
            if code in _CREDENTIAL_ERRORS:
                raise StorageError(
                    f"{action} failed: S3 refused the request ({code}) for {where}; check the "
                    f"AWS credentials and their permissions on bucket {self.bucket!r}"
                ) from None
            raise StorageError(f"{action} failed for {where}: {code} {message}".rstrip()) from None
        except NoCredentialsError:
            raise StorageError(
                f"{action} failed: no AWS credentials were found for {where} (set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role)"
            ) from None
        except EndpointConnectionError as error:
            raise StorageError(
                f"{action} failed: cannot reach the S3 endpoint for {where}: {error}"
            ) from None
        except BotoCoreError as error:
            # A connection closed or a body cut off after the client's retries ran out.
            raise StorageError(
                f"{action} failed for {where}: {type(error).__name__}: {error}"
            ) from None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> ``("bucket", "key/prefix")``."""
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if parsed.scheme != "s3" or not bucket or not prefix:
        raise StorageError(f"{uri!r} is not an s3://<bucket>/<key prefix> URI")
    return bucket, prefix


def resolve_s3_dataset(uri: str, client: Any, region: str | None = None) -> Snapshot:
    """What a reader given ``s3://bucket/prefix`` should open: the snapshot ``latest`` names.

    Also accepts a snapshot's own URI (``.../snapshots/<id>``) or a prefix that holds LanceDB
    tables directly, which are opened as they are.
    """
    bucket, prefix = parse_s3_uri(uri)
    parent, marker, snapshot_id = prefix.rpartition(f"/{SNAPSHOTS_DIR}/")
    if marker and parent and "/" not in snapshot_id:
        return S3DatasetStore(client, bucket, parent, PurePosixPath(parent).name, region).snapshot(
            snapshot_id
        )
    store = S3DatasetStore(client, bucket, prefix, PurePosixPath(prefix).name, region)
    snapshot = store.latest()
    if snapshot is None:
        raise StorageError(
            f"{uri} holds no dataset: no snapshot pointer {store.location} and no LanceDB table"
        )
    return snapshot


def safe_relative_path(relative: str, key: str, bucket: str, target: Path) -> str:
    """``relative`` when it names a file inside ``target``; a :class:`StorageError` otherwise."""
    parts = relative.split("/")
    unsafe = (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
        or PurePosixPath(relative).is_absolute()
    )
    if not unsafe:
        resolved = (target / relative).resolve()
        unsafe = not resolved.is_relative_to(target.resolve())
    if unsafe:
        raise StorageError(
            f"refusing to download s3://{bucket}/{key}: its path {relative!r} would be written "
            f"outside {target} (keys may not hold '..', '.', empty segments, backslashes or "
            "absolute paths)"
        )
    return relative


def _parse_manifest(raw: bytes, where: str) -> list[ManifestEntry]:
    try:
        document = json.loads(raw)
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}, not {MANIFEST_FORMAT!r}")
        return [
            ManifestEntry(path=str(item["path"]), size=int(item["size"]), sha256=item["sha256"])
            for item in document["files"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StorageError(f"the snapshot manifest {where} is not valid: {error}") from None


def _wait_all(futures: list[Future[None]], on_failure: Callable[[], None]) -> None:
    """Waits for every future; on the first failure cancels the rest and raises it."""
    try:
        for future in futures:
            future.result()
    except BaseException:
        on_failure()
        raise


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
