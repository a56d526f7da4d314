"""The typed shape of both datasets: one explicit Arrow schema at the edge.

Nothing past :mod:`fdnix_assets.normalize` sees nix's loose ``meta`` shapes again; every
consumer reads these columns.
"""

from __future__ import annotations

import pyarrow as pa

TABLE_NAME = "packages"
SCHEMA_VERSION = "1"

# Keys of the Arrow schema metadata that say where a table came from.
META_SCHEMA_VERSION = b"fdnix.schema_version"
META_SOURCE = b"fdnix.source"
META_SOURCE_KIND = b"fdnix.source_kind"
META_CREATED_AT = b"fdnix.created_at"
META_EMBEDDING_MODEL = b"fdnix.embedding_model"
META_EMBEDDING_DIMENSIONS = b"fdnix.embedding_dimensions"
META_EMBEDDING_BACKEND = b"fdnix.embedding_backend"

LICENSE_TYPE = pa.struct(
    [
        pa.field("spdx_id", pa.string()),
        pa.field("short_name", pa.string()),
        pa.field("full_name", pa.string()),
        pa.field("url", pa.string()),
        pa.field("free", pa.bool_()),
        pa.field("redistributable", pa.bool_()),
        pa.field("deprecated", pa.bool_()),
    ]
)

PERSON_TYPE = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("email", pa.string()),
        pa.field("github", pa.string()),
        pa.field("github_id", pa.int64()),
        pa.field("matrix", pa.string()),
    ]
)

TEAM_TYPE = pa.struct(
    [
        pa.field("short_name", pa.string()),
        pa.field("scope", pa.string()),
        pa.field("github_teams", pa.list_(pa.string())),
        pa.field("members", pa.list_(PERSON_TYPE)),
    ]
)

STRING_LIST = pa.list_(pa.string())


def vector_type(dimensions: int, value_type: pa.DataType | None = None) -> pa.DataType:
    return pa.list_(pa.field("item", value_type or pa.float32()), dimensions)


# The package flags of the main dataset, counted in its materialization metadata.
FLAG_COLUMNS = ["broken", "insecure", "unfree", "unsupported", "available"]


def main_schema(dimensions: int) -> pa.Schema:
    """Schema of the main dataset (``fdnix-data.lancedb``, table ``packages``)."""
    return pa.schema(
        [
            pa.field("attr_path", pa.string(), nullable=False),
            pa.field("name", pa.string(), nullable=False),
            pa.field("pname", pa.string(), nullable=False),
            pa.field("version", pa.string(), nullable=False),
            pa.field("system", pa.string()),
            pa.field("output_name", pa.string()),
            pa.field("outputs", STRING_LIST),
            pa.field("outputs_to_install", STRING_LIST),
            pa.field("description", pa.string()),
            pa.field("long_description", pa.string()),
            pa.field("homepages", STRING_LIST),
            pa.field("changelog", pa.string()),
            pa.field("download_page", pa.string()),
            pa.field("licenses", pa.list_(LICENSE_TYPE)),
            pa.field("maintainers", pa.list_(PERSON_TYPE)),
            pa.field("teams", pa.list_(TEAM_TYPE)),
            pa.field("platforms", STRING_LIST),
            pa.field("bad_platforms", STRING_LIST),
            pa.field("main_program", pa.string()),
            pa.field("position", pa.string()),
            pa.field("broken", pa.bool_(), nullable=False),
            pa.field("insecure", pa.bool_(), nullable=False),
            pa.field("unfree", pa.bool_(), nullable=False),
            pa.field("unsupported", pa.bool_(), nullable=False),
            pa.field("available", pa.bool_(), nullable=False),
            pa.field("known_vulnerabilities", STRING_LIST),
            pa.field("source_provenance", STRING_LIST),
            pa.field("meta_json", pa.string()),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("vector", vector_type(dimensions)),
        ]
    )
