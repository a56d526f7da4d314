"""Where finished datasets live: immutable snapshots plus a pointer to the latest complete one.

A dataset is a directory tree (a LanceDB database). Publishing copies a finished tree into a
new snapshot, verifies it, and only then moves the pointer, so a reader that follows the
pointer never sees a half-written dataset and a failed run leaves the last good one in place.

:class:`LocalDatasetStore` is the embedded default: snapshots are directories beside the
output path and the pointer is the output path itself, a symlink replaced atomically.
The S3 store in :mod:`fdnix_assets.storage_s3` implements the same interface.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_RETENTION = 7


class StorageError(RuntimeError):
    """A dataset could not be stored or found; the message names the location."""


@dataclass(frozen=True)
class Snapshot:
    """One complete, immutable copy of a dataset that LanceDB can open."""

    dataset: str
    snapshot_id: str
    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)

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

    @property
    def megabytes_per_second(self) -> float:
        return self.total_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_metadata(self) -> dict[str, Any]:
        return {
            "snapshot_uri": self.snapshot.uri,
            "snapshot_id": self.snapshot.snapshot_id,
            "file_count": self.file_count,
            "dataset_bytes": self.total_bytes,
            "publish_seconds": round(self.seconds, 3),
            "publish_mb_per_s": round(self.megabytes_per_second, 1),
            "snapshots_deleted": len(self.deleted_snapshots),
        }


def new_snapshot_id(run_id: str | None = None) -> str:
    """Sortable and unique: ``20261125T031500123456Z-<run id prefix>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    suffix = (run_id or uuid.uuid4().hex)[:8]
    return f"{stamp}-{suffix}"


def tree_listing(root: Path) -> dict[str, int]:
    """Relative POSIX path to size of every file under ``root``."""
    listing = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            listing[path.relative_to(root).as_posix()] = path.stat().st_size
    return listing


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
        """Snapshot ids, oldest first."""

    def require_latest(self) -> Snapshot:
        snapshot = self.latest()
        if snapshot is None:
            raise StorageError(
                f"no {self.dataset} snapshot exists at {self.location} yet: "
                "materialize the upstream asset (run the earlier phase) first"
            )
        return snapshot


class LocalDatasetStore(DatasetStore):
    """Snapshots in ``<parent>/.fdnix-snapshots/<name>/<id>``; ``output_path`` links to one."""

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
            return Snapshot(self.dataset, "unversioned", str(self.output_path))
        return None

    def list_snapshots(self) -> list[str]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(path.name for path in self.snapshots_dir.iterdir() if path.is_dir())

    def publish(self, staged: Path, snapshot_id: str) -> PublishReport:
        started = time.perf_counter()
        expected = tree_listing(staged)
        if not expected:
            raise StorageError(f"refusing to publish {staged}: it holds no files")
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        target = self.snapshots_dir / snapshot_id
        partial = self.snapshots_dir / f".partial-{snapshot_id}"
        if staged.resolve().parent == self.snapshots_dir.resolve() or _same_device(
            staged, self.snapshots_dir
        ):
            os.replace(staged, partial)
        else:
            shutil.copytree(staged, partial)
        if tree_listing(partial) != expected:
            shutil.rmtree(partial, ignore_errors=True)
            raise StorageError(f"snapshot {snapshot_id} of {self.dataset} did not verify")
        os.replace(partial, target)
        self._adopt_unversioned()
        self._point_to(target)
        deleted = self._prune(keep=snapshot_id)
        return PublishReport(
            snapshot=Snapshot(self.dataset, snapshot_id, str(target)),
            file_count=len(expected),
            total_bytes=sum(expected.values()),
            seconds=time.perf_counter() - started,
            deleted_snapshots=deleted,
        )

    def checkout(self, snapshot: Snapshot, target: Path) -> Path:
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(snapshot.uri, target)
        return target

    def _adopt_unversioned(self) -> None:
        """Moves a plain directory at the output path into the snapshots, keeping it."""
        if self.output_path.is_dir() and not self.output_path.is_symlink():
            os.replace(self.output_path, self.snapshots_dir / "00000000T000000000000Z-legacy")

    def _point_to(self, target: Path) -> None:
        link = self.output_path.parent / f".{self.output_path.name}.link-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.relpath(target, self.output_path.parent), link)
        os.replace(link, self.output_path)

    def _prune(self, keep: str) -> list[str]:
        snapshots = self.list_snapshots()
        current = self.latest()
        protected = {keep, current.snapshot_id if current else keep}
        excess = [s for s in snapshots[: max(0, len(snapshots) - self.retention)]]
        deleted = []
        for snapshot_id in excess:
            if snapshot_id in protected:
                continue
            shutil.rmtree(self.snapshots_dir / snapshot_id, ignore_errors=True)
            deleted.append(snapshot_id)
        for leftover in self.snapshots_dir.glob(".partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return deleted


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
