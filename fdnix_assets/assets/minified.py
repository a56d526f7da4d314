"""The minified phase: main dataset -> the search dataset (``fdnix.lancedb``) and its checks."""

import random
import shutil
import time
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    Config,
    ConfigurableResource,
    Failure,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from fdnix_assets.assets.history import recent_metadata, recorded_number
from fdnix_assets.assets.layer import LambdaLayerPublisher
from fdnix_assets.embedding.resource import VectorIndexSettings
from fdnix_assets.io_managers import DATASET_METADATA_KEY, StagedDataset
from fdnix_assets.layer import SizeBudget
from fdnix_assets.minify import MinifyError, MinifyOptions, MinifyReport, build_minified
from fdnix_assets.resources import DatasetStorage
from fdnix_assets.search import PackageSearch, SearchError
from fdnix_assets.storage import Snapshot

# The minified dataset ships in a Lambda layer: 250 MB unzipped for a function and all its
# layers. Above the target it still fits but leaves little room to grow; above the limit
# (what the layer publisher's budget leaves after the function's package and other layers)
# it cannot be published.
SIZE_TARGET_BYTES = 150_000_000
SIZE_LIMIT_BYTES = SizeBudget().layer_allowance_bytes
SMOKE_CHECK = "minified_smoke_search"
SIZE_CHECK = "minified_size_budget"
SMOKE_SAMPLE = 12
SMOKE_SEED = 20261125


class SearchIndexSettings(ConfigurableResource):
    """How the minified dataset's full-text indexes treat words (FTS_STOPWORDS, FTS_STEMMER).

    Both name one language (``english``); None (the variable set empty) turns stop-word
    removal or stemming off.
    """

    fts_stopwords: str | None = Field(default="english", description="FTS_STOPWORDS")
    fts_stemmer: str | None = Field(default="english", description="FTS_STEMMER")


class MinifiedConfig(Config):
    vector_dimensions: int | None = Field(
        default=None,
        description=(
            "Project vectors to this many dimensions (PCA) to save space; None keeps the "
            "model's dimension (stored as float16)."
        ),
    )
    long_description_chars: int = Field(
        default=600, description="Characters of the long description kept for full-text search."
    )


def smoke_queries(search: PackageSearch, count: int = SMOKE_SAMPLE) -> dict[str, Any]:
    """Searches sampled packages by attribute path and by description.

    An attribute path must come back first (name matching works); a description should come
    back in the top 10 (full-text and vector search work); the rate is reported.
    """
    rng = random.Random(SMOKE_SEED)
    rows = rng.sample(range(search.rows), min(count, search.rows))
    attr_paths = search.columns["attr_path"]
    descriptions = search.columns["description"]
    by_name, by_description, failures = 0, 0, []
    described = 0
    first: dict[str, Any] = {}
    for row in rows:
        attr_path = attr_paths[row].as_py()
        response = search.search(attr_path, limit=10)
        found = [result.attr_path for result in response.results]
        if found[:1] == [attr_path]:
            by_name += 1
        else:
            failures.append(f"{attr_path!r} -> {found[:3]}")
        if not first:
            first = {
                "query": attr_path,
                "mode": response.mode,
                "note": response.note or "",
                "top": found[:5],
                "ms": response.timings_ms.get("total", 0.0),
            }
        description = descriptions[row].as_py()
        if description and len(description) >= 12:
            described += 1
            response = search.search(description[:200], limit=10)
            if attr_path in [result.attr_path for result in response.results]:
                by_description += 1
    return {
        "sampled": len(rows),
        "found_by_attr_path": by_name,
        "found_by_description": by_description,
        "with_description": described,
        "failures": failures,
        "first": first,
    }


def _report_metadata(report: MinifyReport) -> dict[str, Any]:
    return {
        "dagster/row_count": report.rows,
        "rows": report.rows,
        "rows_with_vector": report.vectors,
        "total_bytes": report.total_bytes,
        "total_mb": round(report.total_bytes / 1e6, 1),
        "column_bytes": MetadataValue.json(report.column_bytes),
        "index_bytes": MetadataValue.json(report.index_bytes),
        "vector_representation": (
            f"float16 x {report.vector_dimensions}"
            + (
                f" (PCA from {report.source_dimensions})"
                if report.vector_dimensions != report.source_dimensions
                else ""
            )
        ),
        "vector_index": report.vector_index or "none (exact search)",
        "fts_index_seconds": report.fts_index_seconds,
        "seconds": MetadataValue.json(report.seconds),
    }


@asset(
    key="minified_dataset",
    group_name="fdnix",
    kinds={"lancedb"},
    owners=["team:fdnix"],
    io_manager_key="dataset_io_manager",
    metadata={DATASET_METADATA_KEY: "minified"},
    ins={"package_embeddings": AssetIn("package_embeddings")},
    description=(
        "The search dataset (fdnix.lancedb, table packages) shipped in the Lambda layer: "
        "what a search result shows (names, version, description, homepage, main program, "
        "licenses as SPDX ids, maintainers as GitHub handles, flags) plus float16 vectors, "
        "full-text indexes on the names (split on . - _ and camel case), description and "
        "long description, and the vector index. `fdnix search` and the Lambda handler "
        "answer from it."
    ),
)
def minified_dataset(
    context: AssetExecutionContext,
    config: MinifiedConfig,
    package_embeddings: Snapshot,
    dataset_storage: DatasetStorage,
    search_index: SearchIndexSettings,
    vector_index: VectorIndexSettings,
) -> Output[StagedDataset]:
    dataset_storage.remove_abandoned_runs(context.run_id, log=context.log.info)
    work_dir = dataset_storage.work_dir / context.run_id / "minified"
    staged = work_dir / "fdnix.lancedb"
    options = MinifyOptions(
        fts_stopwords=search_index.fts_stopwords,
        fts_stemmer=search_index.fts_stemmer,
        vector_dimensions=config.vector_dimensions,
        vector_index_partitions=vector_index.partitions,
        long_description_chars=config.long_description_chars,
    )
    try:
        report = build_minified(
            package_embeddings.uri, staged, options, package_embeddings.storage_options
        )
    except MinifyError as error:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise Failure(description=f"minifying {package_embeddings.uri} failed: {error}") from None
    context.log.info(
        f"minified {report.rows:,} packages ({report.vectors:,} with vectors) into "
        f"{report.total_bytes / 1e6:.1f} MB in {report.seconds.get('total', 0):.1f} s"
    )

    started = time.perf_counter()
    search = PackageSearch.open(str(staged))
    try:
        smoke = smoke_queries(search)
    finally:
        search.close()
    smoke_seconds = time.perf_counter() - started
    if smoke["found_by_attr_path"] != smoke["sampled"]:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise Failure(
            description=(
                "the minified dataset does not find packages by their own attribute path: "
                + "; ".join(smoke["failures"][:5])
            ),
            metadata={"smoke": MetadataValue.json(smoke)},
        )
    metadata = _report_metadata(report) | {
        "smoke_query": MetadataValue.json(smoke["first"]),
        "smoke_found_by_attr_path": f"{smoke['found_by_attr_path']}/{smoke['sampled']}",
        "smoke_found_by_description": (
            f"{smoke['found_by_description']}/{smoke['with_description']}"
        ),
        "smoke_seconds": round(smoke_seconds, 2),
        "search_mode": smoke["first"].get("mode", ""),
        "source_snapshot": package_embeddings.snapshot_id,
    }
    return Output(StagedDataset(path=staged, rows=report.rows), metadata=metadata)


# Both checks block: when one fails, nothing downstream (the Lambda layer) runs in that run,
# so a dataset that cannot answer searches or cannot fit the layer never ships.
@asset_check(
    asset=minified_dataset,
    name=SMOKE_CHECK,
    blocking=True,
    description=(
        "The published dataset answers searches: sampled packages come back first when "
        "searched by attribute path. Blocking: a failure stops the layer from publishing."
    ),
)
def minified_smoke_search_check(minified_dataset: Snapshot) -> AssetCheckResult:
    try:
        search = PackageSearch.open(minified_dataset.uri, minified_dataset.storage_options)
    except SearchError as error:
        return AssetCheckResult(passed=False, description=str(error))
    try:
        smoke = smoke_queries(search, count=5)
    finally:
        search.close()
    passed = smoke["found_by_attr_path"] == smoke["sampled"]
    return AssetCheckResult(
        passed=passed,
        description=(
            f"{smoke['found_by_attr_path']} of {smoke['sampled']} sampled packages found first "
            f"by attribute path; {smoke['found_by_description']} of "
            f"{smoke['with_description']} in the top 10 by description"
        ),
        metadata={"smoke": MetadataValue.json(smoke)},
    )


@asset_check(
    asset=minified_dataset,
    name=SIZE_CHECK,
    blocking=True,
    description=(
        f"The dataset fits the Lambda layer: under {SIZE_TARGET_BYTES / 1e6:.0f} MB is the "
        "target (room to grow; above it the check warns); above what the layer budget leaves "
        f"for the dataset ({SIZE_LIMIT_BYTES / 2**20:.0f} MiB by default) it cannot ship, and "
        "the failure blocks the layer."
    ),
)
def minified_size_check(
    context: AssetCheckExecutionContext,
    minified_dataset: Snapshot,
    layer_publisher: LambdaLayerPublisher,
) -> AssetCheckResult:
    size = _published_bytes(context)
    limit = layer_publisher.budget.layer_allowance_bytes
    if size is None:
        return AssetCheckResult(passed=False, description="the materialization recorded no size")
    if size > limit:
        severity, passed = AssetCheckSeverity.ERROR, False
    elif size > SIZE_TARGET_BYTES:
        severity, passed = AssetCheckSeverity.WARN, False
    else:
        severity, passed = AssetCheckSeverity.WARN, True
    return AssetCheckResult(
        passed=passed,
        severity=severity,
        description=(
            f"{size / 1e6:.1f} MB (target {SIZE_TARGET_BYTES / 1e6:.0f} MB, limit "
            f"{limit / 1e6:.1f} MB)"
        ),
        metadata={"total_bytes": size, "target_bytes": SIZE_TARGET_BYTES, "limit_bytes": limit},
    )


def _published_bytes(context: AssetCheckExecutionContext) -> int | None:
    """The size the latest materialization (of the run's channel partition) recorded."""
    history = recent_metadata(context, minified_dataset.key)
    size = recorded_number(history[0] if history else None, "total_bytes", "dataset_bytes")
    return None if size is None else int(size)
