"""The embedding phase, measured: ``run_embedding_benchmark`` is called by ``benchmarks/run.py``.

Given the work directory where the metadata phase left ``fdnix-data.lancedb``, it runs the
real ``package_embeddings`` asset with the local backend (as ``embedding_job`` does) and
reports, in the same process:

- ``embed_texts`` / ``embed_s``: texts embedded and the asset's own embedding time;
- ``embed_baseline_s``: the model's own ``encode`` (default settings) on exactly those
  texts, the yardstick ``embed_s`` must stay within 10% of;
- ``rerun_embedded``: texts embedded by a second run with nothing changed (0 expected);
- ``vector_index_s``: building the IVF-PQ index;
- ``vector_recall_at_10`` / ``vector_query_ms_p50``: the index with its recommended query
  settings against exact search, on real query texts (the dev and extra queries, and the
  descriptions of 200 random packages), warm.

``embed_sample`` embeds a fixed sample of that many packages instead of all of them (the
output says so); recall is then measured over the vectors that exist.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

QUERY_PACKAGES = 200
QUERY_SEED = 20261125
QUERY_FILES = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "queries-dev.jsonl",
    Path(__file__).resolve().parent / "queries-extra.jsonl",
)


def query_texts(table: Any) -> list[str]:
    """Real queries people type, plus descriptions of random packages."""
    texts = []
    for path in QUERY_FILES:
        if path.is_file():
            texts += [json.loads(line)["query"] for line in path.read_text().splitlines() if line]
    descriptions = [
        text
        for text in table.search()
        .select(["description"])
        .limit(None)
        .to_arrow()["description"]
        .to_pylist()
        if text
    ]
    texts += random.Random(QUERY_SEED).sample(descriptions, min(QUERY_PACKAGES, len(descriptions)))
    return texts


def run_embedding_benchmark(workdir: Path, embed_sample: int | None = None) -> dict[str, Any]:
    from dagster import materialize

    from fdnix_assets.assets.embeddings import package_embeddings
    from fdnix_assets.assets.metadata import nixpkgs_packages
    from fdnix_assets.datasets import open_packages, read_columns
    from fdnix_assets.definitions import build_resources
    from fdnix_assets.embedding.local import load_minilm, use_all_cores
    from fdnix_assets.embedding.phase import EmbeddingModel, pending_requests
    from fdnix_assets.embedding.vector_index import measure_recall, recommended_query_settings
    from fdnix_assets.settings import load_settings

    settings = load_settings(
        {
            "OUTPUT_PATH": str(workdir / "fdnix-data.lancedb"),
            "OUTPUT_MINIFIED_PATH": str(workdir / "fdnix.lancedb"),
            "EMBEDDING_BACKEND": "local",
        }
    )
    resources = build_resources(settings)
    store = resources["dataset_storage"].store("main")
    backend = resources["embedding_backend"]
    model_spec = EmbeddingModel(backend.model_id, backend.dimensions, backend.backend)

    # The texts the asset is about to embed: the same selection it makes.
    work = pending_requests(open_packages(store.require_latest()), model_spec, embed_sample)
    texts = [request.text for request in work.requests]
    model = load_minilm()
    use_all_cores()
    model.encode(texts[:64], show_progress_bar=False)  # warm-up, for both measurements
    started = time.perf_counter()
    model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    baseline_s = time.perf_counter() - started

    run_config = {"ops": {"package_embeddings": {"config": {"embed_sample": embed_sample}}}}

    def embed() -> dict[str, Any]:
        result = materialize(
            [nixpkgs_packages, package_embeddings],
            selection=["package_embeddings"],
            resources=resources,
            run_config=run_config,
        )
        metadata = result.asset_materializations_for_node("package_embeddings")[0].metadata
        return {key: getattr(value, "value", value) for key, value in metadata.items()}

    first = embed()
    second = embed()

    table = open_packages(store.require_latest())
    embedded = read_columns(table, ["attr_path", "vector"])
    embedded = embedded.filter(embedded["vector"].is_valid())
    ids = embedded["attr_path"].to_pylist()
    vectors = np.asarray(embedded["vector"].combine_chunks().flatten(), dtype=np.float32).reshape(
        len(ids), -1
    )
    queries = model.encode(query_texts(table), convert_to_numpy=True, show_progress_bar=False)
    query_settings = recommended_query_settings(table)
    if query_settings is None:
        recall = measure_recall(table, ids, vectors, queries, nprobes=1, refine_factor=None)
    else:
        nprobes, refine_factor = query_settings
        recall = measure_recall(
            table, ids, vectors, queries, nprobes=nprobes, refine_factor=refine_factor
        )

    results: dict[str, Any] = {
        "embed_texts": first["texts_embedded"],
        "embed_s": first["embed_seconds"],
        "embed_baseline_s": round(baseline_s, 2),
        "embed_vs_baseline": round(first["embed_seconds"] / baseline_s, 3) if baseline_s else None,
        "embed_texts_per_s": first["texts_per_second"],
        "embed_truncated": first["texts_truncated"],
        "embed_phase_s": first["total_seconds"],
        "rerun_embedded": second["texts_embedded"],
        "vector_index": first["vector_index"],
        "vector_index_s": first["vector_index_seconds"],
        "vector_recall_at_10": round(recall.recall_at_k, 4),
        "vector_query_ms_p50": round(recall.query_ms_p50, 2),
        "vector_query_ms_p95": round(recall.query_ms_p95, 2),
        "vector_recall_queries": recall.queries,
    }
    if embed_sample is not None:
        results["embed_sample"] = embed_sample
        results["embed_note"] = (
            f"--embed-sample {embed_sample}: only a fixed sample of {embed_sample:,} packages "
            "was embedded; the others have null vectors"
        )
    return results
