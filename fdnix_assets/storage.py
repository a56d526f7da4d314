"""Where finished datasets live: immutable snapshots plus a pointer to the latest complete one.

A dataset is a directory tree (a LanceDB database). Publishing copies a finished tree into a
new snapshot, verifies it, and only then moves the pointer, so a reader that follows the
pointer never sees a half-written dataset and a failed run leaves the last good one in place.

:class:`LocalDatasetStore` is the embedded default: snapshots are directories beside the
output path and the pointer is the output path itself, a symlink replaced atomically.
The S3 store in :mod:`fdnix_assets.storage_s3` implements the same interface.

Retention keeps the newest ``retention`` snapshots (default 7) and never deletes the one the
pointer names, even when the pointer was moved back to an older snapshot with
:meth:`DatasetStore.point_to` (a rollback).

Two runs at once: nothing in the store serializes them (the Dagster pool does, when runs go
through the queue), so a publish only moves the pointer forward. Snapshot ids sort by run,
in the order runs first published, then by publish (:func:`new_snapshot_id`); a publish
whose snapshot sorts before the one the pointer names leaves the pointer alone and reports
the newer snapshot as ``superseded_by``. So when two runs overlap, every dataset ends on the
snapshots of the same run (the one that published first last), never the main dataset of
one run beside the minified dataset of the other. The check and the move are one step: a
lock file locally, a conditional write (If-Match / If-None-Match) of the pointer in S3.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DEFAULT_RETENTION = 7
UNVERSIONED_SNAPSHOT_ID = "unversioned"
LEGACY_SNAPSHOT_ID = "00000000T000000000000Z-legacy"
PARTIAL_PREFIX = ".partial-"
# A snapshot still being written is younger than this; older incomplete ones are debris.
ABANDONED_AFTER = timedelta(hours=6)


class StorageError(RuntimeError):
    """A dataset could not be stored or found; the message names the location."""


@dataclass(frozen=True)
class Snapshot:
    """One complete, immutable copy of a dataset that LanceDB can open."""

    dataset: str
    snapshot_id: str
    uri: str
    # Credentials for LanceDB's object store: kept out of repr() so that logging a snapshot,
    # or an error message that formats one, never prints them.
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri


@dataclass(frozen=True)
class PublishReport:
    """What publishing a snapshot did, for materialization metadata."""

    snapshot: Snapshot
    file_count: int
    total_bytes: int
    seconds: float
    deleted_snapshots: list[str] = field(default_factory=list)
    # The copy itself (upload to S3, or copy/rename on disk), without checksums, the
    # verification listing, the pointer move and retention; 0 when not measured apart.
    upload_seconds: float = 0.0
    pointer: str = ""
    manifest_sha256: str = ""
    # A newer run's snapshot the pointer already named: this one was stored, not pointed to.
    superseded_by: str = ""

    @property
    def megabytes_per_second(self) -> float:
        return self.total_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def upload_megabytes_per_second(self) -> float:
        seconds = self.upload_seconds or self.seconds
        return self.total_bytes / 1e6 / seconds if seconds > 0 else 0.0

    def as_metadata(self) -> dict[str, Any]:
        """Materialization metadata: where the snapshot is, how big, how fast it was stored."""
        metadata: dict[str, Any] = {
            "snapshot_uri": self.snapshot.uri,
            "snapshot_id": self.snapshot.snapshot_id,
            "file_count": self.file_count,
            "dataset_bytes": self.total_bytes,
            "dataset_mb": round(self.total_bytes / 1e6, 1),
            "upload_seconds": round(self.upload_seconds or self.seconds, 3),
            "upload_mb_per_s": round(self.upload_megabytes_per_second, 1),
            "publish_seconds": round(self.seconds, 3),
            "publish_mb_per_s": round(self.megabytes_per_second, 1),
            "snapshots_deleted": len(self.deleted_snapshots),
        }
        if self.pointer:
            metadata["pointer"] = self.pointer
        if self.manifest_sha256:
            metadata["manifest_sha256"] = self.manifest_sha256
        if self.superseded_by:
            metadata["superseded_by"] = self.superseded_by
        return metadata


SNAPSHOT_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_SNAPSHOT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# When each run (by id) first published from this process: its snapshots sort together.
_RUN_FIRST_STAMPS: dict[str, str] = {}


def new_snapshot_id(run_id: str | None = None) -> str:
    """Sortable and unique: ``<stamp>-<run id prefix>-<stamp>`` for a run's snapshots.

    The first stamp is when the run first published (in this process), the last one when this
    snapshot was: a run's snapshots sort together, in publish order, after those of every run
    that published before it. Without a run: ``<stamp>-<random>``.
    """
    stamp = datetime.now(UTC).strftime(SNAPSHOT_STAMP_FORMAT)
    if run_id is None:
        return f"{stamp}-{uuid.uuid4().hex[:8]}"
    first = _RUN_FIRST_STAMPS.setdefault(run_id, stamp)
    return f"{first}-{run_id[:8]}-{stamp}"


def check_snapshot_id(snapshot_id: str, where: str) -> str:
    """Rejects ids that could not be one path segment (they name directories and key prefixes)."""
    if not _SNAPSHOT_ID_RE.match(snapshot_id) or ".." in snapshot_id:
        raise StorageError(
            f"{where}: {snapshot_id!r} is not a snapshot id "
            "(letters, digits, '.', '_' and '-', starting with a letter or digit)"
        )
    return snapshot_id


def snapshot_created_at(snapshot_id: str) -> datetime | None:
    """When a snapshot was started, read from its id; None for ids not made by new_snapshot_id."""
    try:
        return datetime.strptime(snapshot_id.split("-", 1)[0], SNAPSHOT_STAMP_FORMAT).replace(
            tzinfo=UTC
        )
    except ValueError:
        return None


def file_sha256(path: Path, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def tree_listing(root: Path) -> dict[str, int]:
    """Relative POSIX path to size of every file under ``root``."""
    listing = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            listing[path.relative_to(root).as_posix()] = path.stat().st_size
    return listing


def staged_files(staged: Path, dataset: str, snapshot_id: str, action: str) -> dict[str, int]:
    """What every store checks before publishing: a valid id and a non-empty directory."""
    check_snapshot_id(snapshot_id, action)
    if not staged.is_dir():
        raise StorageError(f"cannot publish {staged} as {dataset}: not a directory")
    files = tree_listing(staged)
    if not files:
        raise StorageError(f"refusing to publish {staged}: it holds no files")
    return files


class DatasetStore(ABC):
    """Snapshots of one dataset (``fdnix-data.lancedb`` or ``fdnix.lancedb``)."""

    def __init__(self, dataset: str, retention: int = DEFAULT_RETENTION) -> None:
        if retention < 1:
            raise ValueError("retention must keep at least one snapshot")
        self.dataset = dataset
        self.retention = retention

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the pointer lives, for messages."""

    @abstractmethod
    def latest(self) -> Snapshot | None:
        """The snapshot the pointer names, or None before the first publish."""

    @abstractmethod
    def publish(self, staged: Path, snapshot_id: str) -> PublishReport:
        """Copies ``staged`` into a new snapshot, verifies it, moves the pointer, prunes."""

    @abstractmethod
    def checkout(self, snapshot: Snapshot, target: Path) -> Path:
        """Makes a private, writable local copy of ``snapshot`` at ``target``."""

    @abstractmethod
    def list_snapshots(self) -> list[str]:
        """Complete snapshot ids, oldest first."""

    @abstractmethod
    def point_to(self, snapshot_id: str) -> Snapshot:
        """Moves the pointer to an existing complete snapshot (a rollback, or a re-publish)."""

    @abstractmethod
    def prune(self) -> list[str]:
        """Deletes snapshots beyond the newest ``retention``, never the pointer's; returns ids."""

    @abstractmethod
    def snapshot(self, snapshot_id: str) -> Snapshot:
        """A snapshot by id (whether it exists is not checked)."""

    def newest_of_run(self, run_id: str) -> Snapshot | None:
        """The newest complete snapshot run ``run_id`` published here, if it published one.

        What a step should read of an upstream asset materialized earlier in its own run:
        when another run publishes at the same time, the pointer may name that run's
        snapshot (newer, or still without vectors) instead.
        """
        own = [
            snapshot_id
            for snapshot_id in self.list_snapshots()
            if snapshot_id.split("-")[1:2] == [run_id[:8]]
        ]
        return self.snapshot(own[-1]) if own else None

    def require_latest(self) -> Snapshot:
        snapshot = self.latest()
        if snapshot is None:
            raise StorageError(
                f"no {self.dataset} snapshot exists at {self.location} yet: "
                "materialize the upstream asset (run the earlier phase) first"
            )
        return snapshot


class LocalDatasetStore(DatasetStore):
    """Snapshots in ``<parent>/.fdnix-snapshots/<name>/<id>``; ``output_path`` links to one.

    The pointer is the output path itself: a relative symlink, replaced with a rename, so
    anything that opens ``OUTPUT_PATH`` gets the latest complete snapshot. A plain directory
    found at the output path (written by the original indexer) is read as it is, and adopted
    as the oldest snapshot on the next publish.
    """

    def __init__(self, output_path: Path, retention: int = DEFAULT_RETENTION) -> None:
        super().__init__(output_path.name, retention)
        self.output_path = output_path.absolute()
        self.snapshots_dir = self.output_path.parent / ".fdnix-snapshots" / self.output_path.name

    @property
    def location(self) -> str:
        return str(self.output_path)

    def latest(self) -> Snapshot | None:
        if self.output_path.is_symlink():
            target = self.output_path.resolve()
            if not target.is_dir():
                raise StorageError(
                    f"{self.output_path} points to {target}, which does not exist; "
                    f"snapshots are kept in {self.snapshots_dir}"
                )
            return Snapshot(self.dataset, target.name, str(target))
        if self.output_path.is_dir():
            # A plain directory written by an earlier indexer: readable as it is.
            return Snapshot(self.dataset, UNVERSIONED_SNAPSHOT_ID, str(self.output_path))
        if self.output_path.exists():
            raise StorageError(f"{self.output_path} is a file, not a dataset directory")
        return None

    def snapshot(self, snapshot_id: str) -> Snapshot:
        check_snapshot_id(snapshot_id, self.location)
        return Snapshot(self.dataset, snapshot_id, str(self.snapshots_dir / snapshot_id))

    def list_snapshots(self) -> list[str]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(
            path.name
            for path in self.snapshots_dir.iterdir()
            if path.is_dir() and not path.name.startswith(".")
        )

    def publish(self, staged: Path, snapshot_id: str) -> PublishReport:
        started = time.perf_counter()
        expected = staged_files(staged, self.dataset, snapshot_id, f"publishing {staged}")
        if self.output_path.exists() and not (
            self.output_path.is_dir() or self.output_path.is_symlink()
        ):
            raise StorageError(f"{self.output_path} is a file, not a dataset directory")
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        target = self.snapshots_dir / snapshot_id
        if target.exists():
            raise StorageError(f"snapshot {snapshot_id} of {self.dataset} already exists: {target}")
        partial = self.snapshots_dir / f"{PARTIAL_PREFIX}{snapshot_id}"
        copy_started = time.perf_counter()
        try:
            if _same_device(staged, self.snapshots_dir):
                # Scratch space lives beside the output, so "copying" is a rename.
                os.replace(staged, partial)
            else:
                shutil.copytree(staged, partial)
            copied = tree_listing(partial)
            if copied != expected:
                raise StorageError(
                    f"snapshot {snapshot_id} of {self.dataset} did not verify: "
                    + describe_listing_difference(expected, copied)
                )
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        copy_seconds = time.perf_counter() - copy_started
        os.replace(partial, target)
        superseded_by = self._advance_pointer(target)
        deleted = self.prune()
        return PublishReport(
            snapshot=Snapshot(self.dataset, snapshot_id, str(target)),
            file_count=len(expected),
            total_bytes=sum(expected.values()),
            seconds=time.perf_counter() - started,
            deleted_snapshots=deleted,
            upload_seconds=copy_seconds,
            pointer=str(self.output_path),
            superseded_by=superseded_by or "",
        )

    def point_to(self, snapshot_id: str) -> Snapshot:
        check_snapshot_id(snapshot_id, f"moving {self.output_path}")
        target = self.snapshots_dir / snapshot_id
        if not target.is_dir():
            raise StorageError(
                f"{self.dataset} has no snapshot {snapshot_id!r} in {self.snapshots_dir}"
            )
        self._adopt_unversioned()
        self._point_to(target)
        return Snapshot(self.dataset, snapshot_id, str(target))

    def checkout(self, snapshot: Snapshot, target: Path) -> Path:
        source = Path(snapshot.uri)
        if not source.is_dir():
            raise StorageError(f"snapshot {snapshot.snapshot_id} of {self.dataset} is missing")
        target = target.absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_directory(staging, target)
        return target

    def prune(self) -> list[str]:
        snapshots = self.list_snapshots()
        current = self.latest() if self.output_path.is_symlink() else None
        protected = {current.snapshot_id} if current else set()
        deleted = []
        for snapshot_id in snapshots[: max(0, len(snapshots) - self.retention)]:
            if snapshot_id in protected:
                continue
            shutil.rmtree(self.snapshots_dir / snapshot_id, ignore_errors=True)
            deleted.append(snapshot_id)
        # Leftovers of runs that died mid-publish; a young one may belong to a running publish.
        abandoned_before = time.time() - ABANDONED_AFTER.total_seconds()
        for leftover in self.snapshots_dir.glob(f"{PARTIAL_PREFIX}*"):
            if leftover.stat().st_mtime < abandoned_before:
                shutil.rmtree(leftover, ignore_errors=True)
        return deleted

    def _adopt_unversioned(self) -> None:
        """Moves a plain directory at the output path into the snapshots, keeping it."""
        if self.output_path.is_dir() and not self.output_path.is_symlink():
            self.snapshots_dir.mkdir(parents=True, exist_ok=True)
            adopted = self.snapshots_dir / LEGACY_SNAPSHOT_ID
            if adopted.exists():
                adopted = self.snapshots_dir / f"{LEGACY_SNAPSHOT_ID}-{uuid.uuid4().hex[:8]}"
            os.replace(self.output_path, adopted)

    def _advance_pointer(self, target: Path) -> str | None:
        """Points to ``target`` unless the pointer names a newer snapshot; returns that one."""
        with _exclusive_lock(self.snapshots_dir / ".pointer.lock"):
            if self.output_path.is_symlink():
                current = Path(os.readlink(self.output_path)).name
                if current > target.name:
                    return current
            self._adopt_unversioned()
            self._point_to(target)
        return None

    def _point_to(self, target: Path) -> None:
        link = self.output_path.parent / f".{self.output_path.name}.link-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.relpath(target, self.output_path.parent), link)
        os.replace(link, self.output_path)


# Dagster run ids: the names of the runs' own directories in a work directory.
_RUN_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def newest_mtime(root: Path) -> float:
    """When anything under ``root`` (itself included) last changed."""
    newest = root.stat().st_mtime
    for directory, names, files in os.walk(root):
        for name in names + files:
            try:
                newest = max(newest, os.lstat(os.path.join(directory, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def remove_abandoned_run_dirs(
    work_dir: Path, current_run_id: str, older_than: timedelta = ABANDONED_AFTER
) -> list[str]:
    """Deletes the directories killed runs left in ``work_dir``; returns their names.

    A run's scratch copy (up to a whole main dataset) stays behind when the process is
    killed before its cleanup. Only directories named by a run id go, never the current
    run's, and only when nothing in them changed for ``older_than`` (a run still writing
    touches its files). Anything else there (the embedding checkpoint, checkouts) is kept.
    """
    if not work_dir.is_dir():
        return []
    abandoned_before = time.time() - older_than.total_seconds()
    removed = []
    for path in sorted(work_dir.iterdir()):
        if path.name == current_run_id or not _RUN_ID_RE.match(path.name):
            continue
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            if newest_mtime(path) >= abandoned_before:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def describe_listing_difference(expected: dict[str, int], found: dict[str, int]) -> str:
    """Which files are missing, unexpected or of the wrong size (the first few of each)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{path} ({found[path]} bytes, expected {expected[path]})"
        for path in set(expected) & set(found)
        if expected[path] != found[path]
    )
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong size", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    return "; ".join(parts) or "no difference"


def replace_directory(staging: Path, target: Path) -> None:
    """Puts a finished directory at ``target``, replacing whatever was there."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    os.replace(staging, target)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Held by one process at a time (an flock: released by the kernel if the holder dies)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
