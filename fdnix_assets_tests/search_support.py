"""Datasets the search tests share, built once per test session.

The 2k-package sample is normalized, embedded with the local all-MiniLM-L6-v2 (the text the
pipeline embeds, through the pipeline's own embedder) and minified. Each test module asks
for it through a session fixture; the build is memoized per pytest base temp directory, so
the whole session embeds the sample once, whichever modules run.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fdnix_assets.datasets import DatasetProvenance, write_packages
from fdnix_assets.embedding.text import embedding_text
from fdnix_assets.minify import MinifyOptions, build_minified
from fdnix_assets.normalize import normalize_listing
from fdnix_assets.schema import vector_type
from fdnix_assets.search_embedding import MiniLMQueryEmbedder, local_model_dir
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID
from fdnix_assets_tests.samples import local_model_provenance

from .conftest import DEV_QUERIES, SAMPLE_LISTING

_lock = threading.Lock()
_built: dict[str, Path] = {}


def _embed(texts: list[str]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fdnix_assets.embedding.local import LocalEmbedder

    result = LocalEmbedder().embed(texts)
    return np.asarray(result.vectors, dtype=np.float32)


def embedded_sample_main(base: Path) -> Path:
    """The sample as a main dataset with MiniLM vectors (``<base>/search/main.lancedb``)."""
    key = f"main:{base}"
    with _lock:
        if key in _built:
            return _built[key]
        normalized = normalize_listing(
            SAMPLE_LISTING.read_bytes(), model_id=LOCAL_MODEL_ID, dimensions=LOCAL_MODEL_DIMENSIONS
        )
        table = normalized.table
        columns = [table[c].to_pylist() for c in ("attr_path", "main_program", "description")]
        long_descriptions = table["long_description"].to_pylist()
        texts = [
            embedding_text(a, m, d, ld)
            for a, m, d, ld in zip(*columns, long_descriptions, strict=True)
        ]
        vectors = _embed(texts)
        array = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), LOCAL_MODEL_DIMENSIONS
        )
        index = table.schema.get_field_index("vector")
        table = table.set_column(
            index, pa.field("vector", vector_type(LOCAL_MODEL_DIMENSIONS)), array
        )
        path = base / "search" / "main.lancedb"
        write_packages(
            path,
            table,
            local_model_provenance(str(SAMPLE_LISTING)),
        )
        _built[key] = path
        return path


def sample_minified(base: Path) -> Path:
    """The embedded sample, minified with the default options (``<base>/search/fdnix.lancedb``)."""
    main = embedded_sample_main(base)
    key = f"minified:{base}"
    with _lock:
        if key not in _built:
            target = base / "search" / "fdnix.lancedb"
            build_minified(str(main), target, MinifyOptions())
            _built[key] = target
        return _built[key]


def dev_queries() -> list[dict[str, Any]]:
    """The shared fixture's dev queries: ``{"query", "relevant"}`` objects."""
    return [json.loads(line) for line in DEV_QUERIES.read_text().splitlines() if line.strip()]


def fresh_query_embedder() -> MiniLMQueryEmbedder:
    """A MiniLM query embedder of its own, on numpy (the process's shared one may have been
    compiled by a warm-up)."""
    model_dir = local_model_dir()
    assert model_dir is not None, "the MiniLM model files are part of the test setup"
    return MiniLMQueryEmbedder(model_dir)


def package(
    attr_path: str,
    description: str,
    version: str = "1.0",
    **meta: object,
) -> tuple[str, dict[str, object]]:
    """One nix-env listing entry, as ``nix-env -qaP --json --meta`` prints it."""
    pname = attr_path.rsplit(".", 1)[-1]
    full_meta = {
        "available": True,
        "broken": False,
        "insecure": False,
        "unfree": False,
        "unsupported": False,
        "description": description,
        "license": {"spdxId": "MIT", "shortName": "mit", "fullName": "MIT License", "free": True},
        "platforms": ["x86_64-linux", "aarch64-linux"],
        "position": f"/nix/store/{'0' * 32}-source/pkgs/by-name/{pname}/package.nix:1",
    } | meta
    return attr_path, {
        "name": f"{pname}-{version}",
        "pname": pname,
        "version": version,
        "system": "x86_64-linux",
        "outputName": "out",
        "outputs": {"out": None},
        "meta": full_meta,
    }


def listing_dataset(
    base: Path,
    name: str,
    entries: list[tuple[str, dict[str, object]]],
    vectors: dict[str, np.ndarray | None],
    model_id: str = LOCAL_MODEL_ID,
    dimensions: int = LOCAL_MODEL_DIMENSIONS,
    backend: str = "local",
) -> Path:
    """A minified dataset from a hand-written listing with the given vectors per attr path
    (None: the package has no vector, as after a partial embedding run)."""
    listing = json.dumps(dict(entries)).encode()
    table = normalize_listing(listing, model_id=model_id, dimensions=dimensions).table
    rows = [vectors[a] for a in table["attr_path"].to_pylist()]
    missing = [row is None for row in rows]
    zero = np.zeros(dimensions, dtype=np.float32)
    matrix = np.stack([zero if row is None else row for row in rows]).astype(np.float32)
    array = pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.reshape(-1)), dimensions, mask=pa.array(missing)
    )
    index = table.schema.get_field_index("vector")
    table = table.set_column(index, pa.field("vector", vector_type(dimensions)), array)
    main = base / f"{name}-main.lancedb"
    write_packages(
        main,
        table,
        DatasetProvenance(
            source="hand-written listing",
            source_kind="file",
            embedding_model=model_id,
            embedding_dimensions=dimensions,
            embedding_backend=backend,
        ),
    )
    target = base / f"{name}.lancedb"
    build_minified(str(main), target, MinifyOptions())
    return target


def unit(seed: int, dimensions: int = LOCAL_MODEL_DIMENSIONS) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dimensions)
    return (vector / np.linalg.norm(vector)).astype(np.float32)
