"""Reading and writing the LanceDB datasets, and what they record about themselves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Unpack

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from fdnix_assets import schema as s
from fdnix_assets.normalize import NormalizationReport, StreamOptions, open_normalized_stream
from fdnix_assets.storage import Snapshot

# LanceDB logs a warning per query about _distance/_score columns; they are noise here.
os.environ.setdefault("LANCEDB_LOG", "error")


@dataclass(frozen=True)
class DatasetProvenance:
    """What a table records about itself in its schema metadata."""

    source: str
    source_kind: str
    embedding_model: str
    embedding_dimensions: int
    embedding_backend: str
    created_at: str = ""

    def as_schema_metadata(self) -> dict[bytes, bytes]:
        return {
            s.META_SCHEMA_VERSION: s.SCHEMA_VERSION.encode(),
            s.META_SOURCE: self.source.encode(),
            s.META_SOURCE_KIND: self.source_kind.encode(),
            s.META_CREATED_AT: (self.created_at or datetime.now(UTC).isoformat()).encode(),
            s.META_EMBEDDING_MODEL: self.embedding_model.encode(),
            s.META_EMBEDDING_DIMENSIONS: str(self.embedding_dimensions).encode(),
            s.META_EMBEDDING_BACKEND: self.embedding_backend.encode(),
        }

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> DatasetProvenance | None:
        metadata: Mapping[bytes, bytes] = schema.metadata or {}
        if s.META_SOURCE not in metadata:
            return None
        return cls(
            source=metadata[s.META_SOURCE].decode(),
            source_kind=metadata.get(s.META_SOURCE_KIND, b"").decode(),
            embedding_model=metadata.get(s.META_EMBEDDING_MODEL, b"").decode(),
            embedding_dimensions=int(metadata.get(s.META_EMBEDDING_DIMENSIONS, b"0") or 0),
            embedding_backend=metadata.get(s.META_EMBEDDING_BACKEND, b"").decode(),
            created_at=metadata.get(s.META_CREATED_AT, b"").decode(),
        )


def connect(uri: str, storage_options: Mapping[str, str] | None = None) -> Any:
    return lancedb.connect(uri, storage_options=dict(storage_options or {}) or None)


def open_packages(snapshot: Snapshot) -> Any:
    """Opens the ``packages`` table of a snapshot, local or on S3."""
    return connect(snapshot.uri, snapshot.storage_options).open_table(s.TABLE_NAME)


def write_packages(
    directory: Path,
    data: pa.Table | Iterable[pa.RecordBatch],
    provenance: DatasetProvenance,
    schema: pa.Schema | None = None,
) -> Any:
    """Writes ``data`` as a fresh LanceDB database at ``directory`` (replacing any there).

    ``data`` is a table, or record batches of ``schema`` that LanceDB pulls one at a time,
    encoding and writing each while the next is being produced.
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    if isinstance(data, pa.Table):
        schema = data.schema
    elif schema is None:
        raise ValueError("writing record batches needs their schema")
    merged = dict(schema.metadata or {}) | provenance.as_schema_metadata()
    if isinstance(data, pa.Table):
        source: pa.Table | pa.RecordBatchReader = data.replace_schema_metadata(merged)
    else:
        source = pa.RecordBatchReader.from_batches(schema.with_metadata(merged), iter(data))
    return connect(str(directory)).create_table(
        s.TABLE_NAME, data=source, mode="create", on_bad_vectors="null"
    )


class VectorCarryOver:
    """Fills ``vector`` from an earlier dataset's rows with the same content hash, one record
    batch at a time as the batches stream past.

    The content hash covers the embedded text, the model and the dimension, so a match means
    the vector would come out the same. :attr:`reused` counts the vectors filled in.
    """

    def __init__(self, previous: pa.Table | None) -> None:
        self.reused = 0
        self._hashes: pa.Array | None = None
        self._vectors: pa.Array | None = None
        if previous is None or previous.num_rows == 0:
            return
        previous = previous.filter(pc.is_valid(previous["vector"]))
        if previous.num_rows:
            self._hashes = previous["content_hash"].combine_chunks()
            self._vectors = previous["vector"].combine_chunks()

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self._hashes is None or self._vectors is None:
            return batch
        index = batch.schema.get_field_index("vector")
        vector_field = batch.schema.field(index)
        if self._vectors.type != vector_field.type:
            return batch
        positions = pc.index_in(batch["content_hash"], value_set=self._hashes)
        vectors = self._vectors.take(positions)
        self.reused += len(vectors) - vectors.null_count
        return batch.set_column(index, vector_field, vectors)


def read_vectors_for_reuse(snapshot: Snapshot | None, dimensions: int) -> pa.Table | None:
    """``content_hash`` and ``vector`` of an earlier main dataset, when its dimension matches."""
    if snapshot is None:
        return None
    try:
        table = open_packages(snapshot)
    except Exception:
        return None
    field = table.schema.field("vector") if "vector" in table.schema.names else None
    if field is None or field.type != s.vector_type(dimensions):
        return None
    # Only rows that have a vector: a dataset not yet embedded would otherwise hand over
    # 1.5 kB of null-vector zeros per row.
    return read_columns(table, ["content_hash", "vector"], where="vector IS NOT NULL")


def read_columns(table: Any, columns: list[str], where: str | None = None) -> pa.Table:
    """Only the named columns of every row, or of the rows ``where`` keeps (``to_arrow``
    would read every column)."""
    query = table.search()
    if where is not None:
        query = query.where(where)
    return query.select(columns).limit(None).to_arrow()


def column_schema(schema: pa.Schema) -> Any:
    """The table's columns as Dagster's column schema metadata (shown on the asset page)."""
    from dagster import MetadataValue, TableColumn, TableSchema

    return MetadataValue.table_schema(
        TableSchema(
            columns=[
                TableColumn(name=field.name, type=str(field.type), description=None)
                for field in schema
            ]
        )
    )


@dataclass
class MainDatasetBuild:
    """What writing the main dataset from a listing produced, and what the listing was like."""

    report: NormalizationReport
    rows: int
    vectors_reused: int
    flag_counts: dict[str, int]
    with_description: int
    schema: pa.Schema


def build_main_dataset(
    listing_path: Path,
    directory: Path,
    provenance: DatasetProvenance,
    previous_vectors: pa.Table | None = None,
    **options: Unpack[StreamOptions],
) -> MainDatasetBuild:
    """Normalizes the listing at ``listing_path`` into a fresh main dataset at ``directory``.

    Rows stream from the normalizer (several processes on a large listing; ``options`` as
    for :func:`~fdnix_assets.normalize.open_normalized_stream`) through the vector carry-over
    into LanceDB's writer, so encoding and writing overlap normalizing. Raises
    :class:`~fdnix_assets.normalize.InvalidDumpError` when the file is not a package listing.
    """
    with open_normalized_stream(listing_path, **options) as stream:
        carry = VectorCarryOver(previous_vectors)
        flags = dict.fromkeys(s.FLAG_COLUMNS, 0)
        described = 0

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal described
            for batch in stream.batches():
                batch = carry.apply(batch)
                for name in s.FLAG_COLUMNS:
                    flags[name] += int(pc.sum(batch[name]).as_py() or 0)
                described += len(batch) - batch["description"].null_count
                yield batch

        try:
            write_packages(directory, batches(), provenance, schema=stream.schema)
        except Exception:
            # LanceDB reports an error raised while it pulled batches only as text.
            if stream.error is not None:
                raise stream.error from None
            raise
        return MainDatasetBuild(
            report=stream.report(),
            rows=stream.rows,
            vectors_reused=carry.reused,
            flag_counts=flags,
            with_description=described,
            schema=stream.schema,
        )
