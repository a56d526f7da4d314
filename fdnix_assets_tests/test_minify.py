"""The minified dataset: columns, compact forms, indexes, provenance, and the Dagster asset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fdnix_assets import search as fmt
from fdnix_assets.minify import (
    MinifyError,
    MinifyOptions,
    build_minified,
    fts_configs,
    fts_language,
    license_aliases,
    mention_counts,
    package_sets,
    platform_sets,
)
from fdnix_assets.search import PackageSearch
from fdnix_assets.settings import LOCAL_MODEL_ID

from . import search_support


@pytest.fixture(scope="session")
def embedded_main(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_support.embedded_sample_main(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def minified_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_support.sample_minified(tmp_path_factory.getbasetemp())


def _packages(path: Path) -> Any:
    return lancedb.connect(str(path)).open_table("packages")


def test_fts_language_maps_the_settings() -> None:
    assert fts_language("english", "english") == "english"
    assert fts_language(None, "English") == "english"
    assert fts_language(None, None) is None
    with pytest.raises(MinifyError, match="FTS_STOPWORDS='english' and FTS_STEMMER='french'"):
        fts_language("english", "french")
    with pytest.raises(MinifyError, match="FTS_STEMMER='klingon'"):
        fts_language(None, "klingon")


def test_fts_options_follow_stemmer_and_stop_words() -> None:
    configs = fts_configs(MinifyOptions(fts_stopwords="english", fts_stemmer=None))
    assert set(configs) == {"names", "description", "long_description"}
    assert configs["description"].stem is False
    assert configs["description"].remove_stop_words is True
    configs = fts_configs(MinifyOptions(fts_stopwords=None, fts_stemmer="english"))
    assert configs["description"].stem is True
    assert configs["description"].remove_stop_words is False
    # Names are never stemmed: "rust" is not "rusty".
    assert configs["names"].stem is False


def test_platform_sets_number_each_distinct_list_once() -> None:
    numbers, sets = platform_sets(
        [["x86_64-linux"], ["x86_64-linux"], [], ["x86_64-linux"]],
        [[], [], [], ["x86_64-linux"]],
    )
    assert numbers.tolist() == [0, 0, 1, 2]
    assert sets[2] == {"platforms": ["x86_64-linux"], "bad_platforms": ["x86_64-linux"]}


def test_license_aliases_resolve_to_the_stored_label() -> None:
    aliases = license_aliases(
        [[{"spdx_id": "Apache-2.0", "short_name": "asl20", "full_name": "Apache License 2.0"}]]
    )
    assert aliases["asl20"] == aliases["apache-2.0"] == "Apache-2.0"
    assert aliases["apache license 2.0"] == "Apache-2.0"


def test_mentions_count_other_packages_naming_a_package() -> None:
    attr_paths = pa.array(["weechat", "weechat-matrix", "irc-bot", "lonely", "is", "misc"])
    descriptions = pa.array(
        [
            "Fast chat client; weechat is extensible",  # its own name: no mention
            "Matrix plugin for WeeChat.",
            "Bot that relays IRC to weechat, and weechat again",  # counts once
            None,
            "Checks what a value is",
            "Docs: see lonely",
        ]
    )
    long_descriptions = pa.array([None, "Talks to weechat", None, None, None, None])
    counts = mention_counts(attr_paths, descriptions, long_descriptions)
    assert counts.tolist() == [2, 0, 0, 1, 0, 0]
    # A name that is an English function word says nothing when a description uses it.
    assert counts[attr_paths.to_pylist().index("is")] == 0


def test_package_sets_name_the_ecosystems_big_enough_to_search_by() -> None:
    attr_paths = (
        [f"python313Packages.p{i}" for i in range(250)]
        + [f"nodePackages.n{i}" for i in range(199)]
        + [f"fooPackages.f{i}" for i in range(300)]
        + ["git"]
    )
    assert package_sets(attr_paths) == {"python313Packages": "python"}


def test_minified_keeps_the_search_columns_in_compact_form(
    embedded_main: Path, minified_sample: Path
) -> None:
    main = _packages(embedded_main).to_arrow()
    minified = _packages(minified_sample)
    table = minified.to_arrow()
    assert table.num_rows == main.num_rows
    assert table.schema.names == fmt.minified_schema(384).names
    assert table["attr_path"].to_pylist() == main["attr_path"].to_pylist()
    assert table.schema.field("vector").type == fmt.vector_type(384)

    row = main["attr_path"].to_pylist().index("python313Packages.pytest")
    record = table.slice(row, 1).to_pylist()[0]
    source = main.slice(row, 1).to_pylist()[0]
    assert record["licenses"] == [x["spdx_id"] or x["short_name"] for x in source["licenses"]]
    assert record["maintainers"] == [m["github"] or m["name"] for m in source["maintainers"]]
    assert {"python", "pytest", "python313packages"} <= set(record["names"].split())
    platforms = json.loads(table.schema.metadata[fmt.META_PLATFORM_SETS])
    assert platforms[record["platform_set"]]["platforms"] == source["platforms"]

    longest = max(len(x or "") for x in table["long_description"].to_pylist())
    assert longest <= MinifyOptions().long_description_chars

    half = np.asarray(table["vector"].combine_chunks().flatten()).reshape(-1, 384)
    full = np.asarray(main["vector"].combine_chunks().flatten()).reshape(-1, 384)
    cosine = np.sum(half.astype(np.float32) * full, axis=1)
    assert cosine.min() > 0.9999


def test_provenance_and_indexes_are_recorded(minified_sample: Path) -> None:
    table = _packages(minified_sample)
    metadata = table.schema.metadata
    assert metadata[fmt.META_EMBEDDING_MODEL].decode() == LOCAL_MODEL_ID
    assert metadata[fmt.META_EMBEDDING_DIMENSIONS] == b"384"
    assert metadata[fmt.META_EMBEDDING_BACKEND] == b"local"
    assert metadata[fmt.META_VECTOR_COUNT] == str(table.count_rows()).encode()
    assert json.loads(metadata[fmt.META_PACKAGE_SETS]) == {"python313Packages": "python"}
    mentions = table.search().select(["attr_path", "mentions"]).limit(None).to_arrow()
    names = mentions["attr_path"].to_pylist()
    by_name = dict(zip(names, mentions["mentions"].to_pylist(), strict=True))
    assert by_name["git"] > 0
    indexed = {tuple(index.columns) for index in table.list_indices()}
    assert {("names",), ("description",), ("long_description",)} <= indexed
    keys = lancedb.connect(str(minified_sample)).open_table(fmt.NAME_KEYS_TABLE).to_arrow()
    assert keys["key"].to_pylist() == sorted(keys["key"].to_pylist())
    assert int(pc.max(keys["row"]).as_py()) < table.count_rows()


def test_pca_projection_shrinks_vectors_and_search_projects_queries(
    embedded_main: Path, tmp_path: Path
) -> None:
    target = tmp_path / "pca.lancedb"
    report = build_minified(str(embedded_main), target, MinifyOptions(vector_dimensions=128))
    assert report.vector_dimensions == 128 and report.source_dimensions == 384
    assert fmt.META_VECTOR_PROJECTION in _packages(target).schema.metadata
    search = PackageSearch.open(str(target))
    response = search.search("take a screenshot", limit=5)
    assert response.mode == "hybrid"
    assert {"flameshot", "scrot", "maim"} & {r.attr_path for r in response.results}


def test_report_measures_columns_and_indexes(embedded_main: Path, tmp_path: Path) -> None:
    report = build_minified(str(embedded_main), tmp_path / "m.lancedb", MinifyOptions())
    assert report.rows == 2008 and report.vectors == 2008
    assert set(report.column_bytes) == set(fmt.minified_schema(384).names)
    assert report.column_bytes["vector"] > 2008 * 384 * 2 * 0.9
    assert {"names_idx", "description_idx", "long_description_idx", "name_keys"} <= set(
        report.index_bytes
    )
    assert report.total_bytes > sum(report.column_bytes.values())
    assert not (tmp_path / ".m.lancedb.columns").exists()


def test_a_main_dataset_without_provenance_is_refused(tmp_path: Path) -> None:
    db = lancedb.connect(str(tmp_path / "bare.lancedb"))
    db.create_table("packages", data=[{"attr_path": "x"}])
    with pytest.raises(MinifyError, match="embedding model"):
        build_minified(str(tmp_path / "bare.lancedb"), tmp_path / "out", MinifyOptions())


def _materialize_minified(main: Path, workdir: Path, env: dict[str, str] | None = None) -> Any:
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
        | (env or {})
    )
    return materialize(
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


def test_minified_asset_publishes_locally_with_metadata_and_checks(
    embedded_main: Path, tmp_path: Path
) -> None:
    shutil.copytree(embedded_main, tmp_path / "fdnix-data.lancedb")
    result = _materialize_minified(embedded_main, tmp_path)
    assert result.success
    metadata = result.asset_materializations_for_node("minified_dataset")[0].metadata
    assert metadata["rows"].value == 2008
    assert metadata["total_bytes"].value > 0
    assert "vector" in metadata["column_bytes"].value
    assert "names_idx" in metadata["index_bytes"].value
    assert metadata["smoke_found_by_attr_path"].value == "12/12"
    assert metadata["search_mode"].value == "hybrid"
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"minified_smoke_search": True, "minified_size_budget": True}
    published = tmp_path / "fdnix.lancedb"
    assert published.is_symlink()
    assert PackageSearch.open(str(published)).search("git").results[0].attr_path == "git"


def test_minified_asset_reads_and_publishes_on_s3(
    embedded_main: Path, tmp_path: Path, s3_bucket: str
) -> None:
    import boto3

    from fdnix_assets.storage_s3 import S3DatasetStore

    client = boto3.client("s3")
    main_store = S3DatasetStore(client, s3_bucket, "snapshots/fdnix-data.lancedb", "main")
    main_store.publish(embedded_main, "20261125T000000000000Z-testmain")
    result = _materialize_minified(embedded_main, tmp_path, {"ARTIFACTS_BUCKET": s3_bucket})
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"minified_smoke_search": True, "minified_size_budget": True}
    minified = S3DatasetStore(client, s3_bucket, "snapshots/fdnix.lancedb", "fdnix.lancedb")
    snapshot = minified.latest()
    assert snapshot is not None and snapshot.uri.startswith(f"s3://{s3_bucket}/")
    search = PackageSearch.open(snapshot.uri, snapshot.storage_options)
    assert search.search("gnumeric", limit=1).results[0].attr_path == "gnumeric"
