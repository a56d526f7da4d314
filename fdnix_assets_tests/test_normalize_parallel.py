"""normalize_listing_file splitting the work over processes: same rows, same account of issues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fdnix_assets.datasets import DatasetProvenance, build_main_dataset
from fdnix_assets.normalize import (
    INVALID_UTF8_ISSUE,
    InvalidDumpError,
    normalize_listing,
    normalize_listing_file,
)
from fdnix_assets.schema import FLAG_COLUMNS
from fdnix_assets_tests.samples import local_model_provenance

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384


def normalize_file(path: Path, workers: int) -> Any:
    # parallel_min_bytes=0: the sample is far below the size where workers pay off in
    # production, and the point here is that they give the same answer.
    return normalize_listing_file(
        path, model_id=MODEL_ID, dimensions=DIMENSIONS, workers=workers, parallel_min_bytes=0
    )


def test_workers_give_the_same_table_and_issues_as_one_process(
    sample_listing: Path,
) -> None:
    single = normalize_listing(
        sample_listing.read_bytes(), model_id=MODEL_ID, dimensions=DIMENSIONS
    )
    for workers in (2, 3):
        parallel = normalize_file(sample_listing, workers)
        assert parallel.row_count == single.row_count > 2_000
        # Shares interleave as the processes finish batches; each row is the same.
        assert parallel.table.sort_by("attr_path").equals(single.table.sort_by("attr_path"))
        assert parallel.issues == single.issues
        assert parallel.input_shape == single.input_shape


def test_failures_invalid_meta_and_repairs_from_every_share_are_reported(tmp_path: Path) -> None:
    packages: dict[str, Any] = {}
    for index in range(60):
        meta: dict[str, Any] = {"description": f"package number {index}"}
        if index % 20 == 7:
            meta["_fdnix"] = {"evaluationFailed": True}
        if index % 20 == 11:
            meta["_fdnix"] = {"invalidMeta": ["homepage"]}
        if index % 20 == 13:
            meta["description"] = 42
        packages[f"nixpkgs.pkg{index:02d}"] = {"name": f"pkg{index:02d}-1.0", "meta": meta}
    data = json.dumps(packages).encode()
    # One invalid UTF-8 byte, in the last share's part of the listing.
    data = data.replace(b"package number 59", b"package number \xff59")
    listing = tmp_path / "listing.json"
    listing.write_bytes(data)

    parallel = normalize_file(listing, workers=3)

    assert parallel.evaluation_failures == ["pkg07", "pkg27", "pkg47"]
    assert parallel.invalid_meta == {f"pkg{n}": ["homepage"] for n in (11, 31, 51)}
    assert parallel.issues["meta.description: int where a string belongs"] == 3
    assert parallel.issues[INVALID_UTF8_ISSUE] == 1
    assert parallel.stripped_channel_prefix == "nixpkgs"
    assert parallel.row_count == 57
    rows = parallel.table.to_pylist()
    descriptions = {row["attr_path"]: row["description"] for row in rows}
    assert descriptions["pkg00"] == "package number 0"
    assert descriptions["pkg59"] == "package number \ufffd59"


def test_a_bad_listing_fails_the_same_way_with_workers(tmp_path: Path) -> None:
    listing = tmp_path / "truncated.json"
    listing.write_bytes(b'{"hello": {"name": "hello-2.12", "meta": {"description": "trunc')
    with pytest.raises(InvalidDumpError, match="not valid JSON"):
        normalize_file(listing, workers=2)


def test_the_main_dataset_streams_from_the_workers_into_lancedb(
    sample_listing: Path, tmp_path: Path
) -> None:
    single = normalize_listing(
        sample_listing.read_bytes(), model_id=MODEL_ID, dimensions=DIMENSIONS
    )
    provenance = local_model_provenance(str(sample_listing))
    # A previous dataset where a third of the packages already have vectors.
    reusable = single.table.select(["content_hash", "vector"]).slice(0, 700)
    vectors = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ones(700 * DIMENSIONS, dtype=np.float32)), DIMENSIONS
    )
    reusable = reusable.set_column(1, reusable.schema.field("vector"), vectors)

    built = build_main_dataset(
        sample_listing,
        tmp_path / "fdnix-data.lancedb",
        provenance,
        model_id=MODEL_ID,
        dimensions=DIMENSIONS,
        previous_vectors=reusable,
        workers=2,
        parallel_min_bytes=0,
    )

    written = lancedb.connect(str(tmp_path / "fdnix-data.lancedb")).open_table("packages")
    table = written.to_arrow()
    assert built.rows == table.num_rows == single.row_count
    assert built.report.workers == 2
    assert built.report.issues == single.issues
    assert built.vectors_reused == 700
    assert table["vector"].null_count == single.row_count - 700
    assert (
        table.drop(["vector"])
        .sort_by("attr_path")
        .equals(single.table.drop(["vector"]).sort_by("attr_path"))
    )
    assert built.flag_counts == {
        name: int(pc.sum(single.table[name]).as_py()) for name in FLAG_COLUMNS
    }
    assert built.with_description == single.row_count - single.table["description"].null_count
    recorded = DatasetProvenance.from_schema(table.schema)
    assert recorded is not None
    assert (recorded.source, recorded.embedding_model) == (str(sample_listing), MODEL_ID)
