"""Vectors of an embedding run that did not finish, kept so the next run does not pay again.

The embedding phase works on a private copy of the main dataset and publishes it at the end,
so a run killed halfway (SIGKILL, OOM, a lost machine) would lose every vector it computed.
The checkpoint keeps them: after each chunk the local backend embeds, the chunk's
``(content_hash, vector)`` pairs go to a new Arrow IPC stream file, written under a temporary
name and renamed into place, so a kill loses at most the chunk being embedded. The next run
fills the vectors of matching content hashes from the checkpoint before it embeds anything;
the content hash covers the text, the model and the dimension, so a match is exact. Once the
run's dataset is published the vectors live in the snapshot and the checkpoint is deleted.

Layout, inside the storage's work directory (outside any run's own directory, and already
per channel because the work directory is)::

    <work dir>/embedding-checkpoint/<model>-<dimensions>d-<digest>/<stamp>-<id>.arrows

No lock: one run per dataset prefix embeds at a time (the Dagster pool sees to that), and a
file only becomes visible complete. Whatever cannot be read (a file cut short by a full disk,
a foreign file, vectors of another width) is skipped with a warning, never fatal: the
checkpoint only ever saves work.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHECKPOINT_DIR_NAME = "embedding-checkpoint"
CHUNK_SUFFIX = ".arrows"
TEMPORARY_PREFIX = ".tmp-"
MODEL_METADATA_KEY = b"fdnix:embedding_model"
DIMENSIONS_METADATA_KEY = b"fdnix:embedding_dimensions"
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")

Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    del message


def checkpoint_root(work_dir: Path) -> Path:
    """Where every model's checkpoint lives in a storage work directory."""
    return work_dir / CHECKPOINT_DIR_NAME


def model_directory_name(model_id: str, dimensions: int) -> str:
    """A path segment naming (model, dimensions): readable, and unique through a digest."""
    readable = _UNSAFE_RE.sub("_", model_id).strip("._-")[:60] or "model"
    digest = hashlib.sha256(f"{model_id}\0{dimensions}".encode()).hexdigest()[:12]
    return f"{readable}-{dimensions}d-{digest}"


class EmbeddingCheckpoint:
    """The vectors ``model_id`` at ``dimensions`` gave in runs that were cut short."""

    def __init__(
        self, work_dir: Path, model_id: str, dimensions: int, warn: Warn = _ignore
    ) -> None:
        if dimensions < 1:
            raise ValueError(f"embedding checkpoint for {model_id}: dimensions must be positive")
        self.model_id = model_id
        self.dimensions = dimensions
        self.root = checkpoint_root(work_dir)
        self.directory = self.root / model_directory_name(model_id, dimensions)
        self.warn = warn

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("content_hash", pa.string(), nullable=False),
                pa.field("vector", pa.list_(pa.float32(), self.dimensions), nullable=False),
            ],
            metadata={
                MODEL_METADATA_KEY: self.model_id.encode(),
                DIMENSIONS_METADATA_KEY: str(self.dimensions).encode(),
            },
        )

    def chunk_files(self) -> list[Path]:
        """The complete chunk files, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path
            for path in self.directory.iterdir()
            if path.is_file() and path.name.endswith(CHUNK_SUFFIX) and not path.name.startswith(".")
        )

    def append(self, hashes: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Keeps one embedded chunk durably; returns its file (None for an empty chunk).

        Written under a temporary name, flushed to disk, then renamed: the file is either
        absent or complete, whenever the process dies.
        """
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(hashes):
            raise ValueError(
                f"embedding checkpoint {self.directory}: {len(hashes)} content hashes for "
                f"vectors of shape {matrix.shape}"
            )
        if not len(hashes):
            return None
        if matrix.shape[1] != self.dimensions:
            raise ValueError(
                f"embedding checkpoint {self.directory}: vectors have {matrix.shape[1]} "
                f"dimensions, {self.model_id} gives {self.dimensions}"
            )
        flat = pa.array(matrix.reshape(-1), pa.float32())
        batch = pa.record_batch(
            [
                pa.array(list(hashes), pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, self.dimensions),
            ],
            schema=self.schema,
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"
        temporary = self.directory / f"{TEMPORARY_PREFIX}{name}{CHUNK_SUFFIX}"
        final = self.directory / f"{name}{CHUNK_SUFFIX}"
        try:
            with temporary.open("wb") as handle:
                with pa.ipc.new_stream(handle, self.schema) as writer:
                    writer.write_batch(batch)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return final

    def save(self, hashes: Sequence[str], vectors: np.ndarray) -> bool:
        """:meth:`append`, except that a disk problem only warns (the run goes on without this
        chunk checkpointed); returns whether the chunk was kept."""
        try:
            self.append(hashes, vectors)
        except OSError as error:
            self.warn(
                f"could not checkpoint {len(hashes):,} embedded vectors in {self.directory} "
                f"({error}); the run goes on, but a rerun after a kill would embed them again"
            )
            return False
        return True

    def vectors_for(self, wanted: Collection[str]) -> dict[str, np.ndarray]:
        """The checkpointed vectors of the content hashes in ``wanted``.

        Unreadable files and records are skipped with a warning; a file cut short keeps the
        records before the cut.
        """
        if not wanted or not self.directory.is_dir():
            return {}
        self._remove_temporary_files()
        wanted_array = pa.array(list(set(wanted)), pa.string())
        found: dict[str, np.ndarray] = {}
        for path in self.chunk_files():
            for batch in self._read_batches(path):
                matching = batch.filter(pc.is_in(batch.column("content_hash"), wanted_array))
                if not matching.num_rows:
                    continue
                hashes = matching.column("content_hash").to_pylist()
                flat = matching.column("vector").flatten().to_numpy(zero_copy_only=False)
                matrix = np.asarray(flat, dtype=np.float32).reshape(-1, self.dimensions)
                for digest, vector in zip(hashes, matrix, strict=True):
                    found[digest] = vector.copy()
        return found

    def vector_count(self) -> int:
        """Records readable in the checkpoint (for logs and tests)."""
        return sum(
            batch.num_rows for path in self.chunk_files() for batch in self._read_batches(path)
        )

    def delete(self) -> None:
        """Forgets this model's checkpoint (its vectors are in a published snapshot now)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        # The parent goes too once no model's checkpoint is left in it.
        with contextlib.suppress(OSError):
            self.root.rmdir()

    def _read_batches(self, path: Path) -> list[pa.RecordBatch]:
        batches: list[pa.RecordBatch] = []
        try:
            with pa.OSFile(str(path), "rb") as source:
                reader = pa.ipc.open_stream(source)
                problem = self._schema_problem(reader.schema)
                if problem:
                    self.warn(f"ignoring embedding checkpoint file {path}: {problem}")
                    return []
                while True:
                    try:
                        batches.append(reader.read_next_batch())
                    except StopIteration:
                        break
        except (pa.ArrowException, OSError, ValueError) as error:
            kept = sum(batch.num_rows for batch in batches)
            self.warn(
                f"embedding checkpoint file {path} is damaged ({type(error).__name__}: "
                f"{error}); {kept:,} vectors read before the damage are used, the rest "
                "is embedded again"
            )
        return batches

    def _schema_problem(self, schema: pa.Schema) -> str | None:
        metadata = schema.metadata or {}
        model = metadata.get(MODEL_METADATA_KEY, b"").decode(errors="replace")
        dimensions = metadata.get(DIMENSIONS_METADATA_KEY, b"").decode(errors="replace")
        if (model, dimensions) != (self.model_id, str(self.dimensions)):
            return (
                f"it holds vectors of {model or 'an unnamed model'} ({dimensions or '?'} "
                f"dimensions), not {self.model_id} ({self.dimensions})"
            )
        expected = self.schema
        if schema.names != expected.names or schema.types != expected.types:
            return f"its columns are {schema}, expected {expected.remove_metadata()}"
        return None

    def _remove_temporary_files(self) -> None:
        # Only the run that is embedding writes here, and it is this one: a temporary file
        # is the chunk a killed run was writing.
        for path in self.directory.glob(f"{TEMPORARY_PREFIX}*"):
            path.unlink(missing_ok=True)
