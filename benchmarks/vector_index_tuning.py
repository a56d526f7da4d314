"""How the IVF-PQ defaults were chosen: a grid over index and query settings on real vectors.

    python benchmarks/vector_index_tuning.py --vectors /work/cache/minilm-full.npz \
        [--workdir DIR] [--grid 256x8,346x24,...]

``--vectors`` is an ``.npz`` with ``attr_path`` and ``vectors`` (n x d float32 MiniLM vectors
of the full fixture's packages, embedded with the product's embedding text). The script
puts them in a LanceDB table the way the main dataset holds them, then for every index
(partitions x sub-vectors) measures build time and, for every query setting (nprobes x
refine_factor), recall@10 against exact search and warm query latency, on real query texts
(the dev and extra queries and 200 package descriptions, embedded with the same model).
One JSON object per line; the last line is the whole grid.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.embedding_bench import QUERY_FILES, QUERY_PACKAGES, QUERY_SEED

DEFAULT_GRID = "256x8,346x24,256x48,346x48,512x48,346x96"
NPROBES = (10, 20, 40)
REFINE_FACTORS = (0, 2, 5, 10)


def load_queries(model: Any, descriptions: list[str]) -> np.ndarray:
    texts = []
    for path in QUERY_FILES:
        if path.is_file():
            texts += [json.loads(line)["query"] for line in path.read_text().splitlines() if line]
    texts += random.Random(QUERY_SEED).sample(descriptions, QUERY_PACKAGES)
    return model.encode(texts, convert_to_numpy=True, show_progress_bar=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", required=True)
    parser.add_argument("--descriptions", default=None, help="JSON list of package descriptions")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--grid", default=DEFAULT_GRID, help="partitions x sub-vectors, ...")
    parser.add_argument("--nprobes", default=",".join(map(str, NPROBES)))
    parser.add_argument("--refine", default=",".join(map(str, REFINE_FACTORS)), help="0: none")
    args = parser.parse_args(argv)

    import lancedb

    from fdnix_assets.embedding.local import load_minilm, use_all_cores
    from fdnix_assets.embedding.vector_index import (
        VectorIndexPlan,
        build_vector_index,
        measure_recall,
    )

    data = np.load(args.vectors)
    ids = [str(path) for path in data["attr_path"]]
    vectors = data["vectors"].astype(np.float32)
    dimensions = vectors.shape[1]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fdnix-ivf-"))
    table = lancedb.connect(str(workdir / "db")).create_table(
        "packages",
        data=pa.table(
            {
                "attr_path": ids,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dimensions),
            }
        ),
        mode="overwrite",
    )
    descriptions = (
        json.loads(Path(args.descriptions).read_text()) if args.descriptions else list(ids)
    )
    model = load_minilm()
    use_all_cores()
    queries = load_queries(model, descriptions)

    exact_started = time.perf_counter()
    for query in queries[:20]:
        table.search(query).bypass_vector_index().limit(10).select(["attr_path"]).to_arrow()
    exact_ms = (time.perf_counter() - exact_started) / 20 * 1000
    grid: list[dict[str, Any]] = []
    print(json.dumps({"rows": len(ids), "queries": len(queries), "exact_scan_ms": exact_ms}))
    for cell in args.grid.split(","):
        partitions, sub_vectors = (int(value) for value in cell.split("x"))
        plan = VectorIndexPlan(partitions=partitions, sub_vectors=sub_vectors)
        build_s = build_vector_index(table, plan)
        for nprobes in (int(value) for value in args.nprobes.split(",")):
            for refine in (int(value) for value in args.refine.split(",")):
                report = measure_recall(
                    table, ids, vectors, queries, nprobes=nprobes, refine_factor=refine or None
                )
                row = {
                    "partitions": partitions,
                    "sub_vectors": sub_vectors,
                    "build_s": round(build_s, 1),
                    "nprobes": nprobes,
                    "refine_factor": refine,
                    "recall_at_10": round(report.recall_at_k, 4),
                    "query_ms_p50": round(report.query_ms_p50, 2),
                    "query_ms_p95": round(report.query_ms_p95, 2),
                }
                grid.append(row)
                print(json.dumps(row), flush=True)
    print(json.dumps({"exact_scan_ms": round(exact_ms, 1), "grid": grid}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
