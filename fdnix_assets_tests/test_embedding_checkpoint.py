"""The embedding checkpoint (vectors a killed run embedded) and the cleanup of what killed runs
leave in the work directory.

The cache tests use real Arrow IPC files on disk; the asset test runs the real metadata and
embedding phases (MiniLM) on a small slice with a checkpoint left by a "killed run".
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fdnix_assets.datasets import connect
from fdnix_assets.embedding.checkpoint import (
    CHECKPOINT_DIR_NAME,
    TEMPORARY_PREFIX,
    EmbeddingCheckpoint,
    checkpoint_root,
)
from fdnix_assets.embedding.phase import EmbeddingModel, pending_requests
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID
from fdnix_assets.storage import ABANDONED_AFTER, remove_abandoned_run_dirs
from fdnix_assets_tests.embedding_helpers import (
    check_results,
    embedding_metadata,
    first_packages,
    local_settings,
    read_main,
    resources_for,
    run_embeddings,
    run_metadata,
    vectors_by_path,
    write_listing,
)

DIMENSIONS = 8


def unit_vectors(count: int, dimensions: int = DIMENSIONS, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dimensions)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def hashes(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index:04d}" for index in range(count)]


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def test_chunks_round_trip_and_only_wanted_hashes_come_back(tmp_path: Path) -> None:
    checkpoint = EmbeddingCheckpoint(tmp_path, "some-model", DIMENSIONS)
    first, second = unit_vectors(3, seed=1), unit_vectors(2, seed=2)
    checkpoint.append(hashes("a", 3), first)
    checkpoint.append(hashes("b", 2), second)

    assert len(checkpoint.chunk_files()) == 2
    assert checkpoint.vector_count() == 5
    found = checkpoint.vectors_for(["a0001", "b0000", "missing"])
    assert sorted(found) == ["a0001", "b0000"]
    np.testing.assert_array_equal(found["a0001"], first[1])
    np.testing.assert_array_equal(found["b0000"], second[0])
    assert found["a0001"].dtype == np.float32
    # A fresh object (the next run) reads the same files.
    again = EmbeddingCheckpoint(tmp_path, "some-model", DIMENSIONS).vectors_for(hashes("a", 3))
    np.testing.assert_array_equal(np.stack([again[h] for h in hashes("a", 3)]), first)


def test_append_rejects_vectors_of_the_wrong_width_or_count(tmp_path: Path) -> None:
    checkpoint = EmbeddingCheckpoint(tmp_path, "some-model", DIMENSIONS)
    with pytest.raises(ValueError, match="5 dimensions, some-model gives 8"):
        checkpoint.append(hashes("a", 2), unit_vectors(2, dimensions=5))
    with pytest.raises(ValueError, match="3 content hashes for vectors of shape"):
        checkpoint.append(hashes("a", 3), unit_vectors(2))
    assert checkpoint.append([], np.zeros((0, DIMENSIONS), np.float32)) is None
    assert checkpoint.chunk_files() == []


def test_a_torn_chunk_is_ignored_with_a_warning_and_the_rest_is_used(tmp_path: Path) -> None:
    warnings = Warnings()
    checkpoint = EmbeddingCheckpoint(tmp_path, "some-model", DIMENSIONS, warn=warnings)
    whole = unit_vectors(4, seed=3)
    checkpoint.append(hashes("a", 4), whole)
    torn = checkpoint.append(hashes("b", 4), unit_vectors(4, seed=4))
    assert torn is not None
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    # The chunk a killed run was still writing, under its temporary name.
    temporary = checkpoint.directory / f"{TEMPORARY_PREFIX}x.arrows"
    temporary.write_bytes(b"ARROW1 half a chunk")

    found = checkpoint.vectors_for(hashes("a", 4) + hashes("b", 4))
    assert sorted(found) == hashes("a", 4)
    np.testing.assert_array_equal(np.stack([found[h] for h in hashes("a", 4)]), whole)
    assert len(warnings) == 1 and str(torn) in warnings[0] and "damaged" in warnings[0]
    assert not temporary.exists()


def test_a_stream_cut_after_its_first_record_batch_keeps_that_batch(tmp_path: Path) -> None:
    warnings = Warnings()
    checkpoint = EmbeddingCheckpoint(tmp_path, "some-model", DIMENSIONS, warn=warnings)
    checkpoint.directory.mkdir(parents=True)
    path = checkpoint.directory / "20260101T000000000000Z-appended.arrows"
    kept, lost = unit_vectors(3, seed=5), unit_vectors(3, seed=6)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, checkpoint.schema) as writer:
        for prefix, matrix in (("kept", kept), ("lost", lost)):
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.array(hashes(prefix, 3)),
                        pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), DIMENSIONS),
                    ],
                    schema=checkpoint.schema,
                )
            )
        complete = sink.tell()
    path.write_bytes(path.read_bytes()[: complete - 40])

    found = checkpoint.vectors_for(hashes("kept", 3) + hashes("lost", 3))
    assert sorted(found) == hashes("kept", 3)
    assert len(warnings) == 1 and "3 vectors read before the damage" in warnings[0]


def test_a_checkpoint_that_cannot_be_written_only_warns(tmp_path: Path) -> None:
    warnings = Warnings()
    # The work directory is a file: no checkpoint directory can be made under it.
    blocked = tmp_path / "work"
    blocked.write_text("not a directory")
    checkpoint = EmbeddingCheckpoint(blocked, "some-model", DIMENSIONS, warn=warnings)
    assert checkpoint.save(hashes("a", 2), unit_vectors(2)) is False
    assert len(warnings) == 1 and "could not checkpoint 2 embedded vectors" in warnings[0]
    assert checkpoint.vectors_for(hashes("a", 2)) == {}
    writable = EmbeddingCheckpoint(tmp_path / "ok", "some-model", DIMENSIONS, warn=warnings)
    assert writable.save(hashes("a", 2), unit_vectors(2)) is True
    assert writable.vector_count() == 2


def test_garbage_in_the_checkpoint_does_not_stop_a_run(tmp_path: Path) -> None:
    warnings = Warnings()
    checkpoint = EmbeddingCheckpoint(tmp_path, "some-model", DIMENSIONS, warn=warnings)
    checkpoint.append(hashes("a", 2), unit_vectors(2))
    (checkpoint.directory / "00000000-garbage.arrows").write_bytes(os.urandom(300))
    (checkpoint.directory / "00000001-empty.arrows").write_bytes(b"")

    assert sorted(checkpoint.vectors_for(hashes("a", 2))) == hashes("a", 2)
    assert len(warnings) == 2 and all("damaged" in warning for warning in warnings)


def test_another_model_or_dimension_never_sees_the_vectors(tmp_path: Path) -> None:
    original = EmbeddingCheckpoint(tmp_path, "amazon.titan-embed-text-v2:0", DIMENSIONS)
    original.append(hashes("a", 2), unit_vectors(2))
    other_model = EmbeddingCheckpoint(tmp_path, "another-model", DIMENSIONS)
    other_width = EmbeddingCheckpoint(tmp_path, "amazon.titan-embed-text-v2:0", 16)
    assert len({original.directory, other_model.directory, other_width.directory}) == 3
    assert original.directory.parent == checkpoint_root(tmp_path)
    assert ":" not in original.directory.name
    assert other_model.vectors_for(hashes("a", 2)) == {}
    assert other_width.vectors_for(hashes("a", 2)) == {}

    # Even a file moved into the wrong model's directory is recognised by its schema.
    warnings = Warnings()
    misplaced = EmbeddingCheckpoint(tmp_path, "another-model", DIMENSIONS, warn=warnings)
    misplaced.directory.mkdir(parents=True)
    source = original.chunk_files()[0]
    (misplaced.directory / source.name).write_bytes(source.read_bytes())
    assert misplaced.vectors_for(hashes("a", 2)) == {}
    assert len(warnings) == 1 and "amazon.titan-embed-text-v2:0" in warnings[0]
    # Deleting one model's checkpoint leaves the others.
    misplaced.delete()
    assert not misplaced.directory.exists()
    assert sorted(original.vectors_for(hashes("a", 2))) == hashes("a", 2)


def test_the_phase_takes_checkpointed_vectors_and_deletes_the_checkpoint_after_publishing(
    tmp_path: Path,
) -> None:
    packages = first_packages(12)
    settings = local_settings(tmp_path, write_listing(tmp_path / "listing.json", packages))
    resources = resources_for(settings)
    run_metadata(resources)
    work_dir = resources["dataset_storage"].work_dir
    model = EmbeddingModel(LOCAL_MODEL_ID, LOCAL_MODEL_DIMENSIONS, "local")
    main = connect(str(settings.output_path.resolve())).open_table("packages")
    requests = pending_requests(main, model).requests
    assert len(requests) == len(packages)

    # What a killed run left: vectors for the first five texts. They are recognisable (not
    # what MiniLM gives these texts), so the dataset shows where its vectors came from.
    checkpointed = requests[:5]
    planted = unit_vectors(5, LOCAL_MODEL_DIMENSIONS, seed=7)
    checkpoint = EmbeddingCheckpoint(work_dir, LOCAL_MODEL_ID, LOCAL_MODEL_DIMENSIONS)
    checkpoint.append([request.content_hash for request in checkpointed], planted)
    # A leftover of another model in the same work directory changes nothing.
    EmbeddingCheckpoint(work_dir, "another-model", 4).append(
        [checkpointed[0].content_hash], unit_vectors(1, 4)
    )

    result = run_embeddings(resources)
    metadata = embedding_metadata(result)
    assert metadata["vectors_from_checkpoint"] == 5
    assert metadata["texts_embedded"] == len(packages) - 5
    assert metadata["texts_to_embed"] == len(packages)
    assert metadata["rows_with_vector"] == len(packages)
    assert check_results(result) == {"vector_coverage": True, "vector_dimension": True}
    vectors = vectors_by_path(read_main(settings)[0])
    for request, vector in zip(checkpointed, planted, strict=True):
        np.testing.assert_allclose(vectors[request.attr_path], vector, err_msg=request.attr_path)
    assert all(vectors[request.attr_path] is not None for request in requests[5:])

    # Published: this model's checkpoint is gone, the other model's is not this run's to drop.
    assert not checkpoint.directory.exists()
    assert [path.name for path in (work_dir / CHECKPOINT_DIR_NAME).iterdir()] == [
        EmbeddingCheckpoint(work_dir, "another-model", 4).directory.name
    ]
    # The next run finds nothing to embed and nothing in the checkpoint.
    rerun = embedding_metadata(run_embeddings(resources))
    assert (rerun["texts_embedded"], rerun["vectors_from_checkpoint"]) == (0, 0)


def age(path: Path, seconds: float) -> None:
    """Sets the modification time of ``path`` and everything under it ``seconds`` back."""
    then = time.time() - seconds
    for entry in [path, *path.rglob("*")]:
        os.utime(entry, (then, then), follow_symlinks=False)


def make_dir(path: Path, files: int = 2) -> Path:
    path.mkdir(parents=True)
    (path / "nested").mkdir()
    for index in range(files):
        (path / "nested" / f"file-{index}").write_bytes(b"x" * 100)
    return path


def test_only_old_directories_of_other_runs_are_removed(tmp_path: Path) -> None:
    work_dir = tmp_path / ".fdnix-work"
    old = ABANDONED_AFTER.total_seconds() + 3600
    abandoned = make_dir(work_dir / str(uuid.uuid4()))
    young = make_dir(work_dir / str(uuid.uuid4()))
    current = make_dir(work_dir / str(uuid.uuid4()))
    # Old at the top, but a file deep inside was written a moment ago: a run still working.
    touched = make_dir(work_dir / str(uuid.uuid4()))
    kept_names = [CHECKPOINT_DIR_NAME, "checkout", "not-a-run-id"]
    for name in kept_names:
        make_dir(work_dir / name)
    for path in (abandoned, current, touched, *(work_dir / name for name in kept_names)):
        age(path, old)
    (touched / "nested" / "file-0").write_bytes(b"fresh")

    removed = remove_abandoned_run_dirs(work_dir, current.name)

    assert removed == [abandoned.name]
    assert sorted(path.name for path in work_dir.iterdir()) == sorted(
        [young.name, current.name, touched.name, *kept_names]
    )
    assert remove_abandoned_run_dirs(tmp_path / "missing", current.name) == []
    assert remove_abandoned_run_dirs(work_dir, current.name, timedelta(0)) == sorted(
        [young.name, touched.name]
    )
