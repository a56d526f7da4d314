"""Resumable embedding: only new or changed packages are embedded, removed ones disappear,
and a model or dimension change re-embeds everything. Real MiniLM on a small slice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from fdnix_assets.embedding.local import LocalEmbedder
from fdnix_assets.settings import LOCAL_MODEL_ID
from fdnix_assets_tests.bedrock_standin import BedrockStandIn
from fdnix_assets_tests.embedding_helpers import (
    bedrock_settings,
    check_results,
    embedding_metadata,
    first_packages,
    local_settings,
    make_buckets,
    read_main,
    resources_for,
    run_embeddings,
    run_metadata,
    texts_by_path,
    vectors_by_path,
    write_listing,
)

SLICE = 120


@pytest.fixture
def packages() -> dict[str, Any]:
    return first_packages(SLICE)


def embed_once(tmp_path: Path, packages: dict[str, Any]) -> tuple[Any, dict[str, Any], Path]:
    listing = write_listing(tmp_path / "listing.json", packages)
    settings = local_settings(tmp_path, listing)
    resources = resources_for(settings)
    run_metadata(resources)
    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == len(packages)
    return settings, resources, listing


def test_a_rerun_on_unchanged_input_embeds_nothing(
    tmp_path: Path, packages: dict[str, Any]
) -> None:
    settings, resources, _ = embed_once(tmp_path, packages)
    before, _ = read_main(settings)

    run_metadata(resources)
    result = run_embeddings(resources)
    metadata = embedding_metadata(result)
    assert metadata["texts_embedded"] == 0
    assert metadata["texts_reused"] == SLICE
    assert check_results(result) == {"vector_coverage": True, "vector_dimension": True}
    after, provenance = read_main(settings)
    assert after["vector"].equals(before["vector"])
    assert provenance is not None and provenance.embedding_model == LOCAL_MODEL_ID


def test_a_changed_description_re_embeds_exactly_that_package(
    tmp_path: Path, packages: dict[str, Any]
) -> None:
    settings, resources, listing = embed_once(tmp_path, packages)
    before = vectors_by_path(read_main(settings)[0])

    changed = list(packages)[7]
    packages[changed]["meta"]["description"] = "A tiling window manager for Wayland"
    write_listing(listing, packages)
    run_metadata(resources)
    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == 1
    assert metadata["texts_reused"] == SLICE - 1

    after = vectors_by_path(read_main(settings)[0])
    differing = [path for path in after if not np.array_equal(after[path], before[path])]
    assert differing == [changed]
    text = texts_by_path(settings)[changed]
    assert "tiling window manager for Wayland" in text
    expected = LocalEmbedder().embed([text]).vectors[0]
    np.testing.assert_allclose(after[changed], expected, atol=1e-5)


def test_a_removed_package_is_gone(tmp_path: Path, packages: dict[str, Any]) -> None:
    settings, resources, listing = embed_once(tmp_path, packages)
    removed = list(packages)[3]
    del packages[removed]
    write_listing(listing, packages)

    run_metadata(resources)
    metadata = embedding_metadata(run_embeddings(resources))
    assert metadata["texts_embedded"] == 0
    data, _ = read_main(settings)
    assert data.num_rows == SLICE - 1
    assert removed not in data["attr_path"].to_pylist()
    assert data["vector"].null_count == 0


def test_a_model_or_dimension_change_re_embeds_everything(
    tmp_path: Path, packages: dict[str, Any], bedrock_standin: BedrockStandIn, aws_env: str
) -> None:
    settings, _, listing = embed_once(tmp_path, packages)
    local_hashes = read_main(settings)[0]["content_hash"]

    # Only the embedding phase runs with the new model: its provenance check notices.
    buckets = make_buckets(aws_env)
    titan = bedrock_settings(tmp_path, listing, *buckets)
    result = run_embeddings(resources_for(titan))
    metadata = embedding_metadata(result)
    assert metadata["texts_embedded"] == SLICE
    assert metadata["texts_reused"] == 0
    assert "all-MiniLM-L6-v2" in metadata["reembed_reason"]
    assert check_results(result) == {"vector_coverage": True, "vector_dimension": True}
    data, provenance = read_main(titan)
    assert data.schema.field("vector").type == pa.list_(pa.field("item", pa.float32()), 256)
    assert provenance is not None
    assert (provenance.embedding_model, provenance.embedding_dimensions) == (
        "amazon.titan-embed-text-v2:0",
        256,
    )
    assert not set(data["content_hash"].to_pylist()) & set(local_hashes.to_pylist())

    # Same model, another dimension: everything again.
    wider = bedrock_settings(tmp_path, listing, *buckets, bedrock_output_dimensions=512)
    metadata = embedding_metadata(run_embeddings(resources_for(wider)))
    assert metadata["texts_embedded"] == SLICE
    assert "the vectors have 256 dimensions" in metadata["reembed_reason"]
    data, provenance = read_main(wider)
    assert data.schema.field("vector").type.list_size == 512
    assert provenance is not None and provenance.embedding_dimensions == 512


def test_an_embedding_sample_is_the_same_sample_on_every_run(
    tmp_path: Path, packages: dict[str, Any]
) -> None:
    listing = write_listing(tmp_path / "listing.json", packages)
    settings = local_settings(tmp_path, listing)
    resources = resources_for(settings)
    run_metadata(resources)
    sampled = {"ops": {"package_embeddings": {"config": {"embed_sample": 50}}}}

    first = embedding_metadata(run_embeddings(resources, run_config=sampled))
    assert first["texts_embedded"] == 50
    data, _ = read_main(settings)
    hashes = data["content_hash"].to_pylist()
    embedded = [h for h, v in zip(hashes, data["vector"].to_pylist(), strict=True) if v is not None]
    # The sample is the 50 smallest content hashes: spread over the listing, and stable.
    assert sorted(embedded) == sorted(hashes)[:50]

    assert embedding_metadata(run_embeddings(resources, run_config=sampled))["texts_embedded"] == 0
    assert embedding_metadata(run_embeddings(resources))["texts_embedded"] == SLICE - 50
