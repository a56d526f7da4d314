"""Warming a search process up: the query embedder on ONNX Runtime, the vectors in memory.

Warm or not, a search must rank the same way and honour the same filters; a warm-up that
cannot happen (no onnxruntime, a failing read) must leave the slower way answering.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fdnix_assets import lambda_handler, search, search_vectors
from fdnix_assets.search import PackageSearch, SearchFilters

from . import search_support

QUERIES = [
    "git",
    "take a screenshot",
    "terminal multiplexer",
    "Café Ünïcode 日本語",
    "python orm",
    "x " * 300,
]


@pytest.fixture(scope="module")
def minified_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_support.sample_minified(tmp_path_factory.getbasetemp())


def test_the_compiled_query_embedder_gives_the_numpy_vectors() -> None:
    embedder = search_support.fresh_query_embedder()
    assert embedder.runtime == "numpy"
    expected = {query: embedder.embed(query) for query in QUERIES}
    assert embedder.compile(), embedder.compile_error
    assert embedder.runtime == "onnxruntime"
    embedder.clear_cache()
    for query in QUERIES:
        vector = embedder.embed(query)
        assert vector.shape == (384,) and vector.dtype == np.float32
        np.testing.assert_allclose(vector, expected[query], atol=2e-5, err_msg=query)


def test_without_onnxruntime_compiling_says_why_and_numpy_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    embedder = search_support.fresh_query_embedder()
    assert not embedder.compile()
    assert embedder.runtime == "numpy"
    assert "onnxruntime" in (embedder.compile_error or "")
    assert embedder.embed("git").shape == (384,)


def _rankings(engine: PackageSearch, **options: object) -> list[list[str]]:
    dev = [query["query"] for query in search_support.dev_queries()]
    queries = dev + [query for query in QUERIES if len(query) <= search.MAX_QUERY_CHARS]
    return [
        [r.attr_path for r in engine.search(query, limit=10, **options).results]
        for query in queries
    ]


def test_a_warm_search_ranks_exactly_as_a_cold_one(minified_sample: Path) -> None:
    engine = PackageSearch.open(str(minified_sample))
    try:
        cold = _rankings(engine)
        cold_vectors_only = _rankings(engine, use_text=False, use_names=False)
        assert engine.vector_backend == "lancedb"
        engine.warm_up(background=False)
        assert engine.wait_until_warm(0) and engine.warm_up_errors == []
        assert engine.vector_backend == "memory"
        assert getattr(engine.embedder, "runtime", None) == "onnxruntime"
        assert _rankings(engine) == cold
        assert _rankings(engine, use_text=False, use_names=False) == cold_vectors_only
    finally:
        engine.close()


def test_warm_vector_search_applies_filters_before_the_limit(minified_sample: Path) -> None:
    engine = PackageSearch.open(str(minified_sample), warm_up=True)
    try:
        assert engine.vector_backend == "memory"
        for filters in (SearchFilters(unfree=True), SearchFilters(licenses=("MIT",))):
            mask, _ = engine.resolve_filters(filters)
            assert mask is not None
            allowed = set(np.asarray(engine.columns["attr_path"])[mask].tolist())
            found = [
                r.attr_path
                for r in engine.search(
                    "take a screenshot",
                    limit=20,
                    filters=filters,
                    use_text=False,
                    use_names=False,
                ).results
            ]
            assert found and set(found) <= allowed
            assert len(found) == min(20, len(allowed))
    finally:
        engine.close()


def test_a_big_dataset_warms_up_in_the_background_while_answering(
    minified_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "SYNC_VECTOR_LOAD_ROWS", 0)
    engine = PackageSearch.open(str(minified_sample), warm_up=True)
    try:
        assert engine.search("git", limit=3).results[0].attr_path == "git"
        assert engine.wait_until_warm(120)
        assert engine.vector_backend == "memory" and engine.warm_up_errors == []
        assert engine.search("take a screenshot").mode == "hybrid"
    finally:
        engine.close()


def test_a_failed_warm_up_leaves_lancedb_answering(
    minified_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(column: object) -> search_vectors.InMemoryVectors:
        raise OSError("simulated read failure")

    monkeypatch.setattr(search_vectors.InMemoryVectors, "from_arrow", unreadable)
    engine = PackageSearch.open(str(minified_sample))
    try:
        cold = _rankings(engine)
        engine.warm_up(background=False)
        assert engine.vector_backend == "lancedb"
        assert engine.warm_up_errors == ["vectors: OSError: simulated read failure"]
        assert _rankings(engine) == cold
    finally:
        engine.close()


def test_a_text_only_search_has_nothing_to_warm_up(minified_sample: Path) -> None:
    engine = PackageSearch.open(str(minified_sample), auto_embedder=False, warm_up=True)
    try:
        assert not engine.wait_until_warm(0)
        assert engine.vector_backend == "lancedb"
        assert engine.search("git").mode == "text"
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("warm_up", "memory_mb", "enabled"),
    [
        (None, None, True),
        (None, "1769", True),
        (None, "512", False),
        ("true", "512", True),
        ("1", None, True),
        ("false", "4096", False),
        ("0", None, False),
        ("No", None, False),
    ],
)
def test_the_lambda_handler_warms_up_when_the_function_has_the_memory(
    monkeypatch: pytest.MonkeyPatch, warm_up: str | None, memory_mb: str | None, enabled: bool
) -> None:
    for name, value in (("FDNIX_WARM_UP", warm_up), ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert lambda_handler.warm_up_enabled() is enabled


def test_vectors_over_the_memory_budget_stay_in_lancedb(minified_sample: Path) -> None:
    engine = PackageSearch.open(str(minified_sample))
    try:
        needed = search_vectors.memory_bytes(engine.rows, engine.vector_dimensions)
        engine.warm_up(background=False, memory_budget_bytes=needed - 1)
        assert engine.vector_backend == "lancedb"
        assert len(engine.warm_up_errors) == 1 and "over the" in engine.warm_up_errors[0]
        assert getattr(engine.embedder, "runtime", None) == "onnxruntime"
    finally:
        engine.close()
    engine = PackageSearch.open(str(minified_sample))
    try:
        engine.warm_up(background=False, memory_budget_bytes=needed)
        assert engine.vector_backend == "memory" and engine.warm_up_errors == []
        assert engine._memory_vectors is not None
        assert engine._memory_vectors.nbytes == needed
    finally:
        engine.close()


def test_the_lambda_vector_budget_is_a_share_of_the_function_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", raising=False)
    assert lambda_handler.vector_memory_budget() is None
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
    expected = int(2048 * 1024 * 1024 * lambda_handler.WARM_UP_VECTOR_SHARE)
    assert lambda_handler.vector_memory_budget() == expected
    # 120k MiniLM vectors fit a 1,024 MB function; as many 1,024-dimension Titan ones do not.
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
    budget = lambda_handler.vector_memory_budget()
    assert budget is not None
    assert search_vectors.memory_bytes(120_000, 384) < budget
    assert search_vectors.memory_bytes(120_000, 1024) > budget
