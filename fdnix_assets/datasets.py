"""Reading and writing the LanceDB datasets, and what they record about themselves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from fdnix_assets import schema as s
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


def write_packages(directory: Path, table: pa.Table, provenance: DatasetProvenance) -> Any:
    """Writes ``table`` as a fresh LanceDB database at ``directory`` (replacing any there)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    merged = dict(table.schema.metadata or {}) | provenance.as_schema_metadata()
    table = table.replace_schema_metadata(merged)
    return connect(str(directory)).create_table(
        s.TABLE_NAME, data=table, mode="create", on_bad_vectors="null"
    )


def carry_over_vectors(table: pa.Table, previous: pa.Table | None) -> tuple[pa.Table, int]:
    """Fills ``vector`` from ``previous`` rows with the same content hash.

    The content hash covers the embedded text, the model and the dimension, so a match means
    the vector would come out the same. Returns the table and how many vectors were reused.
    """
    if previous is None or previous.num_rows == 0:
        return table, 0
    previous = previous.filter(pc.is_valid(previous["vector"]))
    if previous.num_rows == 0:
        return table, 0
    vector_field = table.schema.field("vector")
    if previous.schema.field("vector").type != vector_field.type:
        return table, 0
    positions = pc.index_in(table["content_hash"], value_set=previous["content_hash"])
    vectors = previous["vector"].combine_chunks().take(positions)
    reused = len(vectors) - vectors.null_count
    index = table.schema.get_field_index("vector")
    return table.set_column(index, vector_field, vectors), reused


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
    return read_columns(table, ["content_hash", "vector"])


def read_columns(table: Any, columns: list[str]) -> pa.Table:
    """Only the named columns of every row (``to_arrow`` would read them all)."""
    return table.search().select(columns).limit(None).to_arrow()


def column_counts(table: pa.Table, columns: list[str]) -> dict[str, int]:
    """How many rows are true, for each boolean column."""
    return {name: int(pc.sum(table[name]).as_py() or 0) for name in columns}


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
