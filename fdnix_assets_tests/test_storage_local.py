"""The local snapshot store: the pointer symlink, retention, failed publishes, legacy datasets."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from fdnix_assets.storage import (
    LEGACY_SNAPSHOT_ID,
    PARTIAL_PREFIX,
    LocalDatasetStore,
    StorageError,
)


def make_tree(root: Path, marker: str, files: int = 3) -> Path:
    """A small dataset-like tree whose contents say which version it is."""
    for index in range(files):
        path = root / "packages.lance" / "data" / f"part-{index}.lance"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{marker} part {index}\n")
    (root / "packages.lance" / "_versions").mkdir(parents=True, exist_ok=True)
    (root / "packages.lance" / "_versions" / "1.manifest").write_text(marker)
    return root


def pointed_marker(store: LocalDatasetStore) -> str:
    """Which version the output path shows, read through the path users open."""
    return (store.output_path / "packages.lance" / "_versions" / "1.manifest").read_text()


def test_publish_moves_the_symlink_to_a_new_immutable_snapshot(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path / "out" / "fdnix-data.lancedb")
    assert store.latest() is None

    first = store.publish(make_tree(tmp_path / "stage1", "v1"), "20260101T000000000000Z-aaaa")
    assert store.output_path.is_symlink()
    assert pointed_marker(store) == "v1"
    assert first.file_count == 4
    assert first.total_bytes == sum(len(f"v1 part {i}\n") for i in range(3)) + 2
    assert Path(first.snapshot.uri) == store.snapshots_dir / "20260101T000000000000Z-aaaa"

    store.publish(make_tree(tmp_path / "stage2", "v2"), "20260102T000000000000Z-bbbb")
    latest = store.latest()
    assert latest is not None
    assert latest.snapshot_id == "20260102T000000000000Z-bbbb"
    assert pointed_marker(store) == "v2"
    # The older snapshot is untouched: a reader that opened it keeps reading v1.
    older = store.snapshots_dir / "20260101T000000000000Z-aaaa"
    assert (older / "packages.lance" / "_versions" / "1.manifest").read_text() == "v1"
    assert store.list_snapshots() == ["20260101T000000000000Z-aaaa", "20260102T000000000000Z-bbbb"]

    metadata = first.as_metadata()
    assert metadata["snapshot_uri"] == first.snapshot.uri
    assert metadata["file_count"] == 4
    assert metadata["pointer"] == str(store.output_path)
    assert {"upload_seconds", "upload_mb_per_s", "dataset_bytes"} <= metadata.keys()


def test_retention_keeps_the_newest_and_the_one_the_pointer_names(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path / "fdnix.lancedb", retention=2)
    ids = [f"2026010{day}T000000000000Z-run{day}" for day in range(1, 6)]
    deleted: list[str] = []
    for day, snapshot_id in enumerate(ids, start=1):
        report = store.publish(make_tree(tmp_path / f"s{day}", f"v{day}"), snapshot_id)
        deleted += report.deleted_snapshots
    assert deleted == ids[:3]
    assert store.list_snapshots() == ids[-2:]

    # A rollback to an older snapshot: retention must not take it away.
    store.point_to(ids[-2])
    assert pointed_marker(store) == "v4"
    store.retention = 1
    assert store.prune() == []
    assert store.list_snapshots() == ids[-2:]
    store.point_to(ids[-1])
    assert store.prune() == [ids[-2]]
    assert store.list_snapshots() == ids[-1:]


def test_publish_reports_what_retention_deleted(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path / "fdnix.lancedb", retention=1)
    store.publish(make_tree(tmp_path / "a", "a"), "20260101T000000000000Z-a")
    report = store.publish(make_tree(tmp_path / "b", "b"), "20260102T000000000000Z-b")
    assert report.deleted_snapshots == ["20260101T000000000000Z-a"]
    assert report.as_metadata()["snapshots_deleted"] == 1


def test_a_failed_publish_leaves_the_pointer_and_the_dataset_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalDatasetStore(tmp_path / "fdnix-data.lancedb")
    store.publish(make_tree(tmp_path / "good", "good"), "20260101T000000000000Z-good")

    with pytest.raises(StorageError, match="holds no files"):
        (tmp_path / "empty").mkdir()
        store.publish(tmp_path / "empty", "20260102T000000000000Z-empty")
    with pytest.raises(StorageError, match="not a directory"):
        store.publish(tmp_path / "missing", "20260102T000000000000Z-missing")

    # A staged tree on another file system is copied; the disk fills up half way.
    monkeypatch.setattr("fdnix_assets.storage._same_device", lambda a, b: False)
    copied: list[str] = []
    real_copy2, real_copytree = shutil.copy2, shutil.copytree

    def copy_until_disk_full(source: str, destination: str) -> str:
        if len(copied) == 2:
            raise OSError(28, "No space left on device", destination)
        copied.append(source)
        return real_copy2(source, destination)

    def copytree_on_a_filling_disk(source: Path, destination: Path, *args: object) -> Path:
        if args:  # copytree's own recursion into subdirectories, copy_function already set
            return real_copytree(source, destination, *args)  # type: ignore[arg-type]
        return real_copytree(source, destination, copy_function=copy_until_disk_full)

    monkeypatch.setattr("fdnix_assets.storage.shutil.copytree", copytree_on_a_filling_disk)
    with pytest.raises(shutil.Error, match="No space left"):
        store.publish(make_tree(tmp_path / "bad", "bad"), "20260103T000000000000Z-bad")
    assert len(copied) == 2

    latest = store.latest()
    assert latest is not None and latest.snapshot_id == "20260101T000000000000Z-good"
    assert pointed_marker(store) == "good"
    assert store.list_snapshots() == ["20260101T000000000000Z-good"]
    assert not list(store.snapshots_dir.glob(f"{PARTIAL_PREFIX}*"))


def test_leftovers_of_a_killed_publish_are_ignored_then_cleaned(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path / "fdnix-data.lancedb")
    store.publish(make_tree(tmp_path / "good", "good"), "20260101T000000000000Z-good")
    # What a process killed mid-copy leaves behind.
    leftover = make_tree(store.snapshots_dir / f"{PARTIAL_PREFIX}20260102T000000000000Z-dead", "x")
    assert store.list_snapshots() == ["20260101T000000000000Z-good"]
    assert store.latest().snapshot_id == "20260101T000000000000Z-good"  # type: ignore[union-attr]

    store.prune()
    assert leftover.is_dir(), "a young partial snapshot may belong to a publish still running"
    day_ago = time.time() - 24 * 3600
    os.utime(leftover, (day_ago, day_ago))
    store.publish(make_tree(tmp_path / "next", "next"), "20260103T000000000000Z-next")
    assert not leftover.exists()


def test_a_plain_directory_from_the_original_indexer_is_read_then_adopted(tmp_path: Path) -> None:
    output = tmp_path / "fdnix-data.lancedb"
    lancedb.connect(str(output)).create_table(
        "packages", pa.table({"attr_path": ["hello", "ripgrep"]})
    )
    store = LocalDatasetStore(output)
    legacy = store.latest()
    assert legacy is not None and legacy.snapshot_id == "unversioned"
    assert lancedb.connect(legacy.uri).open_table("packages").count_rows() == 2

    store.publish(make_tree(tmp_path / "new", "new"), "20260101T000000000000Z-new")
    assert pointed_marker(store) == "new"
    assert store.list_snapshots() == [LEGACY_SNAPSHOT_ID, "20260101T000000000000Z-new"]
    adopted = store.snapshots_dir / LEGACY_SNAPSHOT_ID
    assert lancedb.connect(str(adopted)).open_table("packages").count_rows() == 2


def test_checkout_makes_a_private_copy_and_replaces_an_old_one(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path / "fdnix-data.lancedb")
    report = store.publish(make_tree(tmp_path / "v1", "v1"), "20260101T000000000000Z-v1")
    target = tmp_path / "copy"
    make_tree(target, "stale", files=5)
    store.checkout(report.snapshot, target)
    assert (target / "packages.lance" / "_versions" / "1.manifest").read_text() == "v1"
    assert not (target / "packages.lance" / "data" / "part-4.lance").exists()
    (target / "packages.lance" / "data" / "part-0.lance").write_text("changed")
    snapshot_file = Path(report.snapshot.uri) / "packages.lance" / "data" / "part-0.lance"
    assert snapshot_file.read_text() == "v1 part 0\n"


def test_bad_snapshot_ids_and_unknown_rollbacks_are_refused(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path / "fdnix-data.lancedb")
    with pytest.raises(StorageError, match=r"'\.\./escape' is not a snapshot id"):
        store.publish(make_tree(tmp_path / "a", "a"), "../escape")
    with pytest.raises(StorageError, match="no snapshot '20990101T000000000000Z-none'"):
        store.point_to("20990101T000000000000Z-none")
    with pytest.raises(StorageError, match=r"no fdnix-data\.lancedb snapshot exists"):
        store.require_latest()
