"""Measures the minified dataset and search: size, index build, latency, and ranking quality.

Called by ``benchmarks/run.py`` (``run_minified_benchmark``, ``run_search_benchmark``), or
directly::

    python benchmarks/search_bench.py --dataset WORKDIR/fdnix.lancedb
    python benchmarks/search_bench.py --main WORKDIR/fdnix-data.lancedb --representations

Quality is recall@10 and MRR (reciprocal rank of the first relevant result) on
``../shared/fixtures/queries-dev.jsonl`` and two held-out checks: ``queries-extra.jsonl``,
written before the ranking was tuned (and tuned against since), and ``queries-fresh.jsonl``,
40 intent queries written later, their relevant packages chosen for what they are and only
checked to exist in the fixture, never against a ranking; each for the hybrid search and for
its full-text and vector parts alone. Latency is warm (dataset open and warmed up as the
Lambda handler does it: vectors in memory, the query embedder compiled) over distinct
queries with the query-embedding cache cleared before each, so every query pays for its
embedding.
``open_cold_ms`` is a fresh process opening the dataset as the handler does (warming up in
the background) and answering one query, library imports included;
``open_cold_after_imports_ms`` leaves the imports out; ``open_cold_until_warm_ms`` is when
that process finished warming up.

Wall-clock figures depend on what else the machine runs: each is reported with the CPU time
it took (``*_cpu_ms``, all threads of the process) and the load average seen, so a slow run
on a busy machine can be told from slow code.

Without a pipeline run, ``--build-main`` makes a main dataset from a listing and vectors
computed before (an ``.npz`` with ``attr_path``, ``content_hash`` and ``vectors``, checked
row by row against the listing), so search can be measured on the full fixture without
embedding it again::

    python benchmarks/search_bench.py --build-main LISTING VECTORS.npz --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_FIXTURES = Path(
    os.environ.get("FDNIX_SHARED_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")
)
DEV_QUERIES = SHARED_FIXTURES / "queries-dev.jsonl"
EXTRA_QUERIES = Path(__file__).resolve().parent / "queries-extra.jsonl"
FRESH_QUERIES = Path(__file__).resolve().parent / "queries-fresh.jsonl"
LATENCY_ROUNDS = 3
COLD_RUNS = 3

COLD_SCRIPT = """
import json, sys, time
started, started_cpu = time.perf_counter(), time.process_time()
from fdnix_assets.search import PackageSearch
imported = time.perf_counter()
# As the Lambda handler opens it: warming up in the background while the first query runs.
search = PackageSearch.open(sys.argv[1], warm_up=True)
opened = time.perf_counter()
response = search.search(sys.argv[2], limit=10)
answered = time.perf_counter()
search.wait_until_warm()
warm = time.perf_counter()
print(json.dumps({
    "warm_ms": (warm - started) * 1000,
    "cpu_ms": (time.process_time() - started_cpu) * 1000,
    "import_ms": (imported - started) * 1000,
    "open_ms": (opened - imported) * 1000,
    "first_query_ms": (answered - opened) * 1000,
    "mode": response.mode,
    "top": response.results[0].attr_path if response.results else None,
}))
"""


def load_queries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def quality(search: Any, queries: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """recall@10 (share of relevant packages in the top 10) and MRR, averaged over queries."""
    recall = reciprocal = 0.0
    misses = []
    for query in queries:
        found = [r.attr_path for r in search.search(query["query"], limit=10, **options).results]
        relevant = query["relevant"]
        ranks = [found.index(r) + 1 for r in relevant if r in found]
        recall += len(ranks) / len(relevant)
        reciprocal += 1 / min(ranks) if ranks else 0.0
        if not ranks or min(ranks) > 1:
            misses.append({"query": query["query"], "first_relevant_rank": min(ranks or [0])})
    count = max(len(queries), 1)
    return {
        "recall_at_10": round(recall / count, 3),
        "mrr": round(reciprocal / count, 3),
        "not_first": misses,
    }


def latency(search: Any, queries: list[str], rounds: int = LATENCY_ROUNDS) -> dict[str, Any]:
    """Warm per-query milliseconds over distinct queries, query embedding included."""
    search.search(queries[0], limit=10)
    totals: list[float] = []
    cpu: list[float] = []
    stages: dict[str, list[float]] = {}
    for _ in range(rounds):
        for query in queries:
            if search.embedder is not None and hasattr(search.embedder, "clear_cache"):
                search.embedder.clear_cache()
            started, started_cpu = time.perf_counter(), time.process_time()
            response = search.search(query, limit=10)
            totals.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
            for stage, value in response.timings_ms.items():
                stages.setdefault(stage, []).append(value)
    return {
        "search_p50_ms": round(_percentile(totals, 0.5), 2),
        "search_p95_ms": round(_percentile(totals, 0.95), 2),
        "search_max_ms": round(max(totals), 2),
        "search_samples": len(totals),
        "search_cpu_p50_ms": round(_percentile(cpu, 0.5), 2),
        "search_stage_p50_ms": {k: round(_percentile(v, 0.5), 2) for k, v in stages.items()},
    }


def open_cold(dataset: Path, query: str = "ripgrep", runs: int = COLD_RUNS) -> dict[str, Any]:
    """A fresh Python process opens the dataset and answers one query; median of ``runs``."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", COLD_SCRIPT, str(dataset), query],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        wall = (time.perf_counter() - started) * 1000
        sample = json.loads(done.stdout.strip().splitlines()[-1])
        sample["process_ms"] = wall
        samples.append(sample)

    def median(key: str) -> float:
        return round(statistics.median(s[key] for s in samples), 1)

    return {
        "open_cold_ms": round(
            statistics.median(s["import_ms"] + s["open_ms"] + s["first_query_ms"] for s in samples),
            1,
        ),
        "open_cold_after_imports_ms": round(
            statistics.median(s["open_ms"] + s["first_query_ms"] for s in samples), 1
        ),
        "open_cold_imports_ms": median("import_ms"),
        "open_cold_open_ms": median("open_ms"),
        "open_cold_first_query_ms": median("first_query_ms"),
        "open_cold_process_ms": median("process_ms"),
        "open_cold_cpu_ms": median("cpu_ms"),
        "open_cold_mode": samples[0]["mode"],
        "open_cold_until_warm_ms": median("warm_ms"),
    }


def dataset_bytes(path: Path) -> int:
    root = path.resolve()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure_search(dataset: Path) -> dict[str, Any]:
    """Every search figure of SPEC "Benchmark" for one minified dataset."""
    from fdnix_assets.search import PackageSearch

    dataset = dataset.resolve()
    search = PackageSearch.open(str(dataset))
    dev = load_queries(DEV_QUERIES)
    extra = load_queries(EXTRA_QUERIES) if EXTRA_QUERIES.is_file() else []
    fresh = load_queries(FRESH_QUERIES) if FRESH_QUERIES.is_file() else []
    query_sets = {"dev": dev, "extra": extra, "fresh": fresh}
    results: dict[str, Any] = {
        "minified_bytes": dataset_bytes(dataset),
        "search_mode": "hybrid" if search.embedder is not None else "text",
        "search_note": search.embedder_note or "",
    }
    # Before warming up, vectors are searched through LanceDB's index: its ranking is
    # reported too, since a cold process (and a FDNIX_WARM_UP=false Lambda) answers with it.
    for name, queries in query_sets.items():
        if queries:
            cold_path = quality(search, queries)
            results[f"{name}_recall_at_10_lancedb_vectors"] = cold_path["recall_at_10"]
            results[f"{name}_mrr_lancedb_vectors"] = cold_path["mrr"]
    started = time.perf_counter()
    search.warm_up(background=False)
    results |= {
        "search_warm_up_s": round(time.perf_counter() - started, 2),
        "search_warm_up_errors": search.warm_up_errors,
        "search_vector_backend": search.vector_backend,
        "search_query_embedder": getattr(
            search.embedder, "runtime", type(search.embedder).__name__
        ),
    }
    for name, queries in query_sets.items():
        if not queries:
            continue
        hybrid = quality(search, queries)
        text = quality(search, queries, use_vectors=False)
        vector = quality(search, queries, use_text=False, use_names=False)
        results |= {
            f"{name}_recall_at_10": hybrid["recall_at_10"],
            f"{name}_mrr": hybrid["mrr"],
            f"{name}_fts_recall_at_10": text["recall_at_10"],
            f"{name}_fts_mrr": text["mrr"],
            f"{name}_vector_recall_at_10": vector["recall_at_10"],
            f"{name}_vector_mrr": vector["mrr"],
            f"{name}_not_first": hybrid["not_first"],
        }
    results["load_average_before"] = round(os.getloadavg()[0], 2)
    results |= latency(search, [q["query"] for q in dev + extra])
    search.close()
    results |= open_cold(dataset)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    return results


def build_main_from_vectors(listing: Path, vectors_npz: Path, target: Path) -> dict[str, Any]:
    """A main dataset at ``target``: ``listing`` normalized, vectors from ``vectors_npz``.

    The file must hold the local model's vectors for exactly the listing's packages, in
    order, with the content hashes normalization computes (else the vectors belong to other
    texts and the dataset would lie about them).
    """
    import numpy as np
    import pyarrow as pa

    from fdnix_assets.datasets import DatasetProvenance, write_packages
    from fdnix_assets.nix.extract import decompress_file
    from fdnix_assets.normalize import normalize_listing
    from fdnix_assets.schema import vector_type
    from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / "listing.json"
        decompress_file(listing, plain, name=str(listing))
        table = normalize_listing(
            plain.read_bytes(), model_id=LOCAL_MODEL_ID, dimensions=LOCAL_MODEL_DIMENSIONS
        ).table
    cached = np.load(vectors_npz)
    for column in ("attr_path", "content_hash"):
        if cached[column].tolist() != table[column].to_pylist():
            raise ValueError(
                f"{vectors_npz}: its {column} column does not match {listing} row by row; "
                "the vectors were computed for another listing or another embedding text"
            )
    vectors = np.asarray(cached["vectors"], dtype=np.float32)
    if vectors.shape != (table.num_rows, LOCAL_MODEL_DIMENSIONS):
        raise ValueError(
            f"{vectors_npz}: vectors have shape {vectors.shape}, expected "
            f"({table.num_rows}, {LOCAL_MODEL_DIMENSIONS})"
        )
    array = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1), pa.float32()), LOCAL_MODEL_DIMENSIONS
    )
    table = table.set_column(
        table.schema.get_field_index("vector"),
        pa.field("vector", vector_type(LOCAL_MODEL_DIMENSIONS)),
        array,
    )
    write_packages(
        target,
        table,
        DatasetProvenance(
            source=str(listing),
            source_kind="file",
            embedding_model=LOCAL_MODEL_ID,
            embedding_dimensions=LOCAL_MODEL_DIMENSIONS,
            embedding_backend="local",
        ),
    )
    return {"packages": table.num_rows, "build_main_s": round(time.perf_counter() - started, 2)}


def build_minified_with_dagster(workdir: Path) -> dict[str, Any]:
    """``minified_dataset`` materialized by Dagster from ``workdir/fdnix-data.lancedb``."""
    from dagster import materialize

    from fdnix_assets.assets.embeddings import package_embeddings
    from fdnix_assets.assets.metadata import nixpkgs_packages
    from fdnix_assets.assets.minified import (
        minified_dataset,
        minified_size_check,
        minified_smoke_search_check,
    )
    from fdnix_assets.definitions import build_resources
    from fdnix_assets.settings import load_settings

    settings = load_settings(
        {
            "OUTPUT_PATH": str(workdir / "fdnix-data.lancedb"),
            "OUTPUT_MINIFIED_PATH": str(workdir / "fdnix.lancedb"),
        }
    )
    started = time.perf_counter()
    result = materialize(
        [
            nixpkgs_packages,
            package_embeddings,
            minified_dataset,
            minified_smoke_search_check,
            minified_size_check,
        ],
        selection=[minified_dataset.key],
        resources=build_resources(settings),
    )
    wall = time.perf_counter() - started
    metadata = result.asset_materializations_for_node("minified_dataset")[0].metadata
    seconds = metadata["seconds"].value
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    return {
        "minified_s": seconds.get("total"),
        "minified_run_s": round(wall, 2),
        "minified_bytes": metadata["total_bytes"].value,
        "fts_index_s": metadata["fts_index_seconds"].value,
        "minified_vector_index_s": seconds.get("vector_index"),
        "minified_vector_representation": metadata["vector_representation"].value,
        "minified_vector_index": metadata["vector_index"].value,
        "minified_column_bytes": metadata["column_bytes"].value,
        "minified_index_bytes": metadata["index_bytes"].value,
        "minified_checks": checks,
        "minified_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_minified_benchmark(workdir: Path, embed_sample: int | None = None) -> dict[str, Any]:
    """The minified phase of benchmarks/run.py: builds ``workdir/fdnix.lancedb``."""
    return build_minified_with_dagster(Path(workdir))


def run_search_benchmark(workdir: Path, embed_sample: int | None = None) -> dict[str, Any]:
    """The search phase of benchmarks/run.py, on ``workdir/fdnix.lancedb``."""
    results = measure_search(Path(workdir) / "fdnix.lancedb")
    if embed_sample:
        results["search_note"] = (
            f"only {embed_sample} packages have vectors (--embed-sample); "
            + results.get("search_note", "")
        ).strip()
    return results


def compare_representations(main: Path, dimensions: list[int | None]) -> dict[str, Any]:
    """What float16 and PCA-reduced vectors cost: size, and recall@10 against exact float32.

    The queries are the dev and extra query texts plus 300 package descriptions, embedded
    with the local model; truth is the exact top 10 by cosine over the float32 vectors.
    """
    import lancedb
    import numpy as np

    from fdnix_assets.minify import MinifyOptions, build_minified
    from fdnix_assets.search import PackageSearch
    from fdnix_assets.search_embedding import local_embedder

    main_table = lancedb.connect(str(main)).open_table("packages")
    columns = main_table.search().select(["attr_path", "description", "vector"]).limit(None)
    table = columns.to_arrow()
    vectors = np.asarray(table["vector"].combine_chunks().flatten(), np.float32).reshape(
        table.num_rows, -1
    )
    embedder = local_embedder()
    texts = [q["query"] for q in load_queries(DEV_QUERIES) + load_queries(EXTRA_QUERIES)]
    rng = np.random.default_rng(7)
    descriptions = [d for d in table["description"].to_pylist() if d]
    texts += [descriptions[i] for i in rng.choice(len(descriptions), 300, replace=False)]
    queries = np.stack([embedder.embed(t) for t in texts])
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    out: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="fdnix-repr-"))
    try:
        for dims in dimensions:
            target = scratch / f"d{dims}"
            report = build_minified(str(main), target, MinifyOptions(vector_dimensions=dims))
            search = PackageSearch.open(str(target))
            hits_ann = hits_exact = 0
            for number, query in enumerate(queries):
                vector = search.projection.apply(query) if search.projection else query
                expected = set(truth[number].tolist())
                for exact, counter in ((False, "ann"), (True, "exact")):
                    builder = search.table.search(vector, vector_column_name="vector")
                    builder = builder.distance_type("cosine")
                    if exact:
                        builder = builder.bypass_vector_index()
                    else:
                        builder = builder.nprobes(search.nprobes).refine_factor(
                            search.refine_factor
                        )
                    rows = builder.limit(10).with_row_id(True).select(["_distance"]).to_arrow()
                    found = len(expected & {search._row_of(r) for r in rows["_rowid"].to_pylist()})
                    if counter == "ann":
                        hits_ann += found
                    else:
                        hits_exact += found
            label = f"pca{dims}" if dims else "float16_full"
            out[label] = {
                "dimensions": report.vector_dimensions,
                "total_bytes": report.total_bytes,
                "vector_column_bytes": report.column_bytes.get("vector"),
                "vector_index_bytes": report.index_bytes.get("vector_idx"),
                "vector_index_s": report.seconds.get("vector_index"),
                "recall_at_10_exact_scan": round(hits_exact / (10 * len(queries)), 3),
                "recall_at_10_ann": round(hits_ann / (10 * len(queries)), 3),
                "queries": len(queries),
            }
            search.close()
            shutil.rmtree(target, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a minified dataset to measure")
    parser.add_argument("--workdir", type=Path, help="build fdnix.lancedb here with Dagster")
    parser.add_argument("--main", type=Path, help="a main dataset, for --representations")
    parser.add_argument(
        "--build-main",
        nargs=2,
        type=Path,
        metavar=("LISTING", "VECTORS_NPZ"),
        help="write WORKDIR/fdnix-data.lancedb from a listing and its cached vectors first",
    )
    parser.add_argument(
        "--representations",
        nargs="*",
        type=int,
        default=None,
        help="PCA dimensions to compare with float16 at full dimension",
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.build_main:
        if not args.workdir:
            parser.error("--build-main needs --workdir")
        args.workdir.mkdir(parents=True, exist_ok=True)
        results |= build_main_from_vectors(*args.build_main, args.workdir / "fdnix-data.lancedb")
    if args.workdir:
        results |= run_minified_benchmark(args.workdir)
        results |= run_search_benchmark(args.workdir)
    if args.dataset:
        results |= measure_search(args.dataset)
    if args.main and args.representations is not None:
        results["representations"] = compare_representations(
            args.main, [None, *args.representations]
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
