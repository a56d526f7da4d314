"""The vector index: sized from the table, skipped for small ones, recall measured."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from fdnix_assets.embedding.vector_index import (
    MIN_ROWS_FOR_INDEX,
    RECOMMENDED_REFINE_FACTOR,
    build_vector_index,
    exact_neighbours,
    measure_recall,
    plan_vector_index,
    recommended_query_settings,
)


def test_small_tables_get_no_index_and_large_ones_scale() -> None:
    assert plan_vector_index(MIN_ROWS_FOR_INDEX - 1, 384) is None
    assert plan_vector_index(1_000_000, 384, partitions=0) is None

    full = plan_vector_index(119_845, 384)
    assert full is not None
    # The measured defaults (see the module docstring): sqrt(rows) / 3 partitions, dimension
    # / 8 sub-vectors, half the partitions probed, refine 10.
    assert (full.partitions, full.sub_vectors, full.nprobes, full.refine_factor) == (
        115,
        48,
        58,
        10,
    )
    titan = plan_vector_index(119_845, 256)
    assert titan is not None and 256 % titan.sub_vectors == 0

    # Explicit settings win, but a partition still gets enough vectors to train on.
    explicit = plan_vector_index(10_000, 384, partitions=256, sub_vectors=8)
    assert explicit is not None
    assert (explicit.partitions, explicit.sub_vectors, explicit.nprobes) == (156, 8, 78)
    with pytest.raises(ValueError, match="VECTOR_INDEX_SUB_VECTORS=7"):
        plan_vector_index(10_000, 384, sub_vectors=7)


def test_exact_neighbours_rank_by_cosine() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0.05]], dtype=np.float32)
    assert exact_neighbours(vectors, queries, 3).tolist() == [[0, 1, 2]]


def clustered_vectors(rows: int, dimensions: int, seed: int = 7) -> np.ndarray:
    """Unit vectors around 60 centres, varying along a few directions as text embeddings do
    (their intrinsic dimension is far below their width)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((60, dimensions))
    directions = rng.standard_normal((6, dimensions))
    rng = np.random.default_rng(seed)
    spread = rng.standard_normal((rows, 6)) @ directions * 0.4
    vectors = centres[rng.integers(0, 60, rows)] + spread
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_index_reaches_the_recall_target_and_records_its_query_settings(tmp_path: Path) -> None:
    rows, dimensions = 6_000, 64
    vectors = clustered_vectors(rows, dimensions)
    ids = [f"pkg{index}" for index in range(rows)]
    table = lancedb.connect(str(tmp_path / "db")).create_table(
        "packages",
        data=pa.table(
            {
                "attr_path": ids,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dimensions),
            }
        ),
    )
    plan = plan_vector_index(rows, dimensions)
    assert plan is not None
    seconds = build_vector_index(table, plan)
    assert seconds > 0
    assert [index.index_type for index in table.list_indices()] == ["IvfPq"]
    assert recommended_query_settings(table) == (plan.nprobes, RECOMMENDED_REFINE_FACTOR)

    queries = clustered_vectors(50, dimensions, seed=11)
    report = measure_recall(
        table, ids, vectors, queries, nprobes=plan.nprobes, refine_factor=plan.refine_factor
    )
    assert report.queries == 50
    assert report.recall_at_k >= 0.9
    # The same index without the refine step misses more: the defaults rely on it.
    unrefined = measure_recall(
        table, ids, vectors, queries, nprobes=plan.nprobes, refine_factor=None
    )
    assert unrefined.recall_at_k < report.recall_at_k
