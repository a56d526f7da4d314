"""The IVF-PQ vector index: how big to make it, building it, and measuring its recall.

Why the defaults are what they are. Measured on the full fixture (119,845 packages, real
all-MiniLM-L6-v2 vectors of the product's embedding text, 2 shared cores) with
``benchmarks/vector_index_tuning.py``: recall@10 against exact search on 270 real query
texts (the dev and extra queries, and 200 package descriptions), warm p50 latency.

| partitions x sub-vectors | nprobes | refine | recall@10 | p50 ms | build s |
| --- | --- | --- | --- | --- | --- |
| 256 x 8 (the original defaults) | 40 | none / 10 | 0.33 / 0.64 | 4.4 / 6.5 | 97 |
| 346 x 24 (LanceDB: sqrt(rows), dim/16) | 40 | none / 10 | 0.47 / 0.75 | 6.2 / 7.0 | 66 |
| 346 x 48 | 40 | 10 | 0.82 | 6.0 | 104 |
| 346 x 96 | 40 | 2 / 10 | 0.82 / 0.82 | 6.3 / 6.9 | 201 |
| 128 x 48 | 64 | 10 / 20 | 0.93 / 0.95 | 7.3 / 7.6 | 75 |
| 96 x 48 | 48 / 64 | 10 | 0.92 / 0.95 | 6.0 / 7.6 | 57 |
| 115 x 48 (defaults; main table) | 40 / 58 / 80 | 10 | 0.89 / 0.93 / 0.96 | 7.0 / 7.6 / 8.6 | 92 |

What this says about these vectors: their neighbourhoods are flat (the 10th and 11th
nearest neighbour of a query differ by 0.003 in cosine similarity), so a query's true
neighbours lie in many IVF cells. Past 48 sub-vectors, a refine step makes product
quantization exact enough (96 sub-vectors gain nothing); what limits recall is the share of
cells probed. 8 sub-vectors (8 bytes a vector) lose most neighbours however many cells are
probed; sqrt(rows) cells probed 40 at a time never reach 0.9.

So the defaults are: about sqrt(rows) / 3 partitions, dimension / 8 sub-vectors, and
queries that probe half the partitions and re-rank 10x the requested rows with the exact
vectors. Query time is mostly fixed cost (the PQ scan of half the table is cheap), so this
stays under 10 ms while recall@10 reaches 0.93 (nprobes 58 of 115). ``nprobes`` and
``refine_factor`` are query-time settings: the table records them in the vector field's
metadata (``fdnix.ann.nprobes``, ``fdnix.ann.refine_factor``) for the search code to read.

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
ROWS_PER_PARTITION_ROOT = 3
"""Partitions are sqrt(rows) / 3: 115 for the full fixture."""
DIMENSIONS_PER_SUB_VECTOR = 8
PROBED_SHARE = 0.5
"""Queries probe this share of the partitions."""
RECOMMENDED_REFINE_FACTOR = 10

FIELD_META_PREFIX = "fdnix.ann."


@dataclass(frozen=True)
class VectorIndexPlan:
    """The index to build and the query settings that go with it."""

    partitions: int
    sub_vectors: int
    nprobes: int = 0
    refine_factor: int = RECOMMENDED_REFINE_FACTOR

    def __post_init__(self) -> None:
        if self.nprobes <= 0:
            object.__setattr__(self, "nprobes", recommended_nprobes(self.partitions))

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
    """About a third of the square root of the row count (see the module docstring)."""
    wanted = round(math.sqrt(rows) / ROWS_PER_PARTITION_ROOT)
    return max(1, min(wanted, rows // MIN_ROWS_PER_PARTITION))


def recommended_nprobes(partitions: int) -> int:
    return max(1, math.ceil(partitions * PROBED_SHARE))


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
    *,
    nprobes: int,
    refine_factor: int | None,
    k: int = 10,
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
