"""The embedding phase over a main dataset, without Dagster: what to embed, and writing back.

The metadata phase already carries vectors over by content hash, so in a writable copy of
the main dataset only new or changed packages have a null ``vector``. This module reads
exactly those rows, turns them into :class:`EmbeddingRequest` s, and writes the vectors that
come back in one ``merge_insert`` keyed on ``attr_path``: one bulk write, never row by row.
A package whose text could not be embedded keeps a null vector (never zeros).

When the dataset's vectors belong to another model or dimension than the backend's (its
provenance says so), every package is re-embedded: the table is rewritten with the new
content hashes and an all-null vector column of the new width first.

Vectors a killed run embedded wait in an :class:`~fdnix_assets.embedding.checkpoint.
EmbeddingCheckpoint`; :func:`find_work` fills those first, so only the rest is embedded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fdnix_assets import schema as s
from fdnix_assets.datasets import DatasetProvenance, connect, read_columns, write_packages
from fdnix_assets.embedding.bedrock import EmbeddingRequest
from fdnix_assets.embedding.checkpoint import EmbeddingCheckpoint
from fdnix_assets.embedding.text import content_hash, embedding_text

TEXT_COLUMNS = ["attr_path", "main_program", "description", "long_description", "content_hash"]


@dataclass(frozen=True)
class EmbeddingModel:
    """The model a backend embeds with, and what the dataset records about it."""

    model_id: str
    dimensions: int
    backend: str


@dataclass(frozen=True)
class EmbeddingWork:
    """What one embedding pass has to do to a main dataset."""

    requests: list[EmbeddingRequest]
    """One per package without a vector (the texts to embed), in dataset order."""
    rows: int
    reused: int
    """Packages whose vector was already there (carried over by content hash)."""
    reembed_reason: str | None = None
    """Why every vector is being redone (model or dimension change), if it is."""
    from_checkpoint: int = 0
    """Packages that got their vector from the checkpoint of a run that did not finish
    (already written; not in ``requests``)."""


def reembed_reason(
    provenance: DatasetProvenance | None, vector_type: pa.DataType, model: EmbeddingModel
) -> str | None:
    """Why the dataset's vectors cannot be kept for ``model``, or None when they can."""
    if provenance is None:
        return "the dataset does not record which model its vectors came from"
    if provenance.embedding_model != model.model_id:
        return (
            f"the vectors came from {provenance.embedding_model}, the backend uses {model.model_id}"
        )
    if provenance.embedding_dimensions != model.dimensions:
        return (
            f"the vectors have {provenance.embedding_dimensions} dimensions, "
            f"the backend gives {model.dimensions}"
        )
    if vector_type != s.vector_type(model.dimensions):
        return f"the vector column is {vector_type}, the model gives {model.dimensions} dimensions"
    return None


def open_table(directory: Path) -> Any:
    return connect(str(directory)).open_table(s.TABLE_NAME)


def requests_from_rows(rows: pa.Table, model: EmbeddingModel) -> list[EmbeddingRequest]:
    """The embedding text and content hash of each row, for ``model``."""
    columns = {name: rows[name].to_pylist() for name in TEXT_COLUMNS if name != "content_hash"}
    requests = []
    for attr_path, program, description, long_description in zip(
        columns["attr_path"],
        columns["main_program"],
        columns["description"],
        columns["long_description"],
        strict=True,
    ):
        text = embedding_text(attr_path, program, description, long_description)
        requests.append(
            EmbeddingRequest(content_hash(text, model.model_id, model.dimensions), attr_path, text)
        )
    return requests


def reset_for_model(
    directory: Path, table: Any, provenance: DatasetProvenance | None, model: EmbeddingModel
) -> Any:
    """Rewrites the dataset at ``directory`` for ``model``: new hashes, every vector null."""
    data = table.to_arrow()
    hashes = pa.array([r.content_hash for r in requests_from_rows(data, model)], pa.string())
    data = data.set_column(
        data.schema.get_field_index("content_hash"), s.main_schema(1).field("content_hash"), hashes
    )
    vector_type = s.vector_type(model.dimensions)
    data = data.set_column(
        data.schema.get_field_index("vector"),
        pa.field("vector", vector_type),
        pa.nulls(data.num_rows, vector_type),
    )
    base = provenance or DatasetProvenance(
        source="unknown",
        source_kind="unknown",
        embedding_model="",
        embedding_dimensions=0,
        embedding_backend="",
    )
    new_provenance = replace(
        base,
        embedding_model=model.model_id,
        embedding_dimensions=model.dimensions,
        embedding_backend=model.backend,
        created_at="",
    )
    return write_packages(directory, data, new_provenance)


def sample_hashes(hashes: list[str], size: int) -> set[str]:
    """The ``size`` smallest content hashes: a spread-out sample of packages (hashes are
    uniform) that stays the same from run to run while the texts do."""
    return set(sorted(hashes)[:size])


def pending_requests(table: Any, model: EmbeddingModel, sample: int | None = None) -> EmbeddingWork:
    """The texts ``model`` still has to embed in ``table`` (read only).

    Rows without a vector, or every row when the table's vectors belong to another model
    or dimension (then with the content hashes ``model`` gives them). ``sample`` limits the
    work to a fixed sample of that many packages (``--embed-sample`` of the benchmark).
    """
    provenance = DatasetProvenance.from_schema(table.schema)
    reason = reembed_reason(provenance, table.schema.field("vector").type, model)
    query = table.search()
    if reason is None:
        query = query.where("vector IS NULL")
    pending = query.select(TEXT_COLUMNS).limit(None).to_arrow()
    rows = table.count_rows()
    requests = requests_from_rows(pending, model)
    if sample is not None:
        if reason is None:
            population = read_columns(table, ["content_hash"])["content_hash"].to_pylist()
        else:
            population = [request.content_hash for request in requests]
        chosen = sample_hashes(population, sample)
        requests = [request for request in requests if request.content_hash in chosen]
    return EmbeddingWork(
        requests=requests,
        rows=rows,
        reused=0 if reason else rows - pending.num_rows,
        reembed_reason=reason,
    )


def find_work(
    directory: Path,
    model: EmbeddingModel,
    sample: int | None = None,
    checkpoint: EmbeddingCheckpoint | None = None,
) -> EmbeddingWork:
    """Prepares the writable dataset copy at ``directory`` for ``model`` (rewriting it when
    the model or dimension changed) and lists the texts to embed.

    Vectors found in ``checkpoint`` (embedded by a run that was killed) are written into
    the copy at once and their texts left out of the work.
    """
    table = open_table(directory)
    provenance = DatasetProvenance.from_schema(table.schema)
    reason = reembed_reason(provenance, table.schema.field("vector").type, model)
    if reason is not None:
        table = reset_for_model(directory, table, provenance, model)
    work = pending_requests(table, model, sample)
    work = replace(work, reused=0 if reason else work.reused, reembed_reason=reason)
    if checkpoint is None or not work.requests:
        return work
    kept = checkpoint.vectors_for([request.content_hash for request in work.requests])
    if not kept:
        return work
    written = write_vectors(directory, work.requests, kept, model.dimensions)
    return replace(
        work,
        requests=[request for request in work.requests if request.content_hash not in kept],
        from_checkpoint=written,
    )


def vectors_array(vectors: np.ndarray, dimensions: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dimensions)


def write_vectors(
    directory: Path,
    requests: list[EmbeddingRequest],
    vectors: dict[str, np.ndarray],
    dimensions: int,
) -> int:
    """Merges the vectors found for ``requests`` into the dataset in one bulk write.

    ``vectors`` maps content hashes to vectors; requests without one keep their null
    vector. Returns how many rows got a vector.
    """
    done = [request for request in requests if request.content_hash in vectors]
    if not done:
        return 0
    matrix = np.stack([vectors[request.content_hash] for request in done])
    if matrix.shape[1] != dimensions:
        raise ValueError(f"vectors have {matrix.shape[1]} dimensions; the dataset has {dimensions}")
    update = pa.table(
        {
            "attr_path": pa.array([request.attr_path for request in done], pa.string()),
            "content_hash": pa.array([request.content_hash for request in done], pa.string()),
            "vector": vectors_array(matrix, dimensions),
        }
    )
    table = open_table(directory)
    update = update.cast(pa.schema([table.schema.field(name) for name in update.column_names]))
    table.merge_insert("attr_path").when_matched_update_all().execute(update)
    return len(done)


def compact(directory: Path) -> None:
    """Folds the merge into whole fragments and drops the superseded versions' files, so
    the published snapshot holds one version of the data."""
    with warnings.catch_warnings():
        # It warns that older versions disappear: this copy is private to the run.
        warnings.simplefilter("ignore", UserWarning)
        open_table(directory).optimize(cleanup_older_than=timedelta(0), delete_unverified=True)


def vector_coverage(directory: Path) -> tuple[int, int]:
    """(rows with a vector, rows)."""
    table = open_table(directory)
    return table.count_rows("vector IS NOT NULL"), table.count_rows()
