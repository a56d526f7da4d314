"""The metadata phase: nixpkgs -> the main dataset (``fdnix-data.lancedb``, table ``packages``)."""

import resource
import shutil
import time

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from fdnix_assets.assets.history import recent_metadata, recorded_number
from fdnix_assets.datasets import (
    DatasetProvenance,
    build_main_dataset,
    column_schema,
    open_packages,
    read_columns,
    read_vectors_for_reuse,
)
from fdnix_assets.embedding.resource import EmbeddingBackend
from fdnix_assets.io_managers import DATASET_METADATA_KEY, StagedDataset
from fdnix_assets.nix.extract import ExtractionError, redact_url
from fdnix_assets.normalize import InvalidDumpError
from fdnix_assets.resources import DatasetStorage, NixpkgsSource
from fdnix_assets.storage import Snapshot

SHOWN_LIMIT = 50
DEFAULT_MAX_ROW_DROP = 0.2
UNIQUE_ATTR_PATH_CHECK = "attr_path_unique_and_non_empty"
ROW_COUNT_CHECK = "row_count_not_collapsed"


class MetadataConfig(Config):
    max_row_drop_fraction: float = Field(
        default=DEFAULT_MAX_ROW_DROP,
        description=(
            "Fail instead of publishing when the new listing has this fraction fewer packages "
            "than the current main dataset (an evaluation that silently lost part of nixpkgs)."
        ),
    )


def row_drop_problem(new_rows: int, previous_rows: int | None, max_drop: float) -> str | None:
    """Why a listing that shrank too much must not replace the current dataset, if it did."""
    if not previous_rows or new_rows >= previous_rows:
        return None
    drop = 1 - new_rows / previous_rows
    if drop <= max_drop:
        return None
    return (
        f"the new listing has {new_rows:,} packages, {drop:.0%} fewer than the current main "
        f"dataset's {previous_rows:,} (more than the allowed {max_drop:.0%}); the current "
        "dataset stays. If the drop is real, rerun with a higher max_row_drop_fraction."
    )


@asset(
    key="nixpkgs_packages",
    group_name="fdnix",
    # One run at a time writes the datasets (pools at run granularity in dagster.yaml).
    pool="fdnix_datasets",
    kinds={"nix", "lancedb"},
    owners=["team:fdnix"],
    io_manager_key="dataset_io_manager",
    metadata={DATASET_METADATA_KEY: "main"},
    description=(
        "The main dataset (fdnix-data.lancedb, table packages): every package nixpkgs "
        "evaluates to, one row per attribute path, with its metadata in typed columns, the raw "
        "meta as JSON, and the content hash of its embedding text. Vectors of packages whose "
        "text did not change are carried over from the previous snapshot."
    ),
)
def nixpkgs_packages(
    context: AssetExecutionContext,
    config: MetadataConfig,
    nixpkgs_source: NixpkgsSource,
    dataset_storage: DatasetStorage,
    embedding_backend: EmbeddingBackend,
) -> Output[StagedDataset]:
    started = time.perf_counter()
    dataset_storage.remove_abandoned_runs(context.run_id, log=context.log.info)
    work_dir = dataset_storage.work_dir / context.run_id
    source = redact_url(nixpkgs_source.description)
    store = dataset_storage.store("main")
    previous = store.latest()
    previous_rows = None if previous is None else _row_count(previous)
    previous_vectors = read_vectors_for_reuse(previous, embedding_backend.dimensions)
    staged = work_dir / "fdnix-data.lancedb"
    try:
        listing = nixpkgs_source.fetch(work_dir / "nix", log=context.log.info)
        input_bytes = listing.size_bytes
        provenance = DatasetProvenance(
            source=listing.source,
            source_kind=listing.source_kind,
            embedding_model=embedding_backend.model_id,
            embedding_dimensions=embedding_backend.dimensions,
            embedding_backend=embedding_backend.backend,
        )
        built = build_main_dataset(
            listing.path,
            staged,
            provenance,
            model_id=embedding_backend.model_id,
            dimensions=embedding_backend.dimensions,
            nixpkgs_root=listing.nixpkgs_root,
            previous_vectors=previous_vectors,
            progress=lambda done, total: context.log.info(
                f"normalized {done:,} of {total:,} packages"
            ),
        )
    except (ExtractionError, InvalidDumpError) as error:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise Failure(
            description=f"reading {source} failed: {error}",
            metadata={"source": source},
        ) from None
    except BaseException:
        # A half-written dataset (a full disk, say) must not keep the space it took.
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work_dir / "nix", ignore_errors=True)
    normalized = built.report
    problem = row_drop_problem(built.rows, previous_rows, config.max_row_drop_fraction)
    if problem:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise Failure(
            description=f"{source}: {problem}",
            metadata={"rows": built.rows, "previous_rows": previous_rows or 0},
        )
    seconds = time.perf_counter() - started

    if listing.stderr_lines:
        # The lines themselves were logged as nix-env printed them.
        context.log.warning(
            f"nix-env printed {len(listing.stderr_lines)} lines on stderr (evaluation warnings, "
            "meta attributes it nulled); see nix_stderr_sample in the materialization metadata"
        )
    if normalized.evaluation_failures:
        context.log.warning(
            f"{len(normalized.evaluation_failures)} packages failed to evaluate and are left "
            f"out: {', '.join(normalized.evaluation_failures[:SHOWN_LIMIT])}"
        )
    return Output(
        StagedDataset(path=staged, rows=built.rows),
        metadata={
            "dagster/row_count": built.rows,
            "source": listing.source,
            "source_kind": listing.source_kind,
            "input_shape": normalized.input_shape,
            "input_bytes": input_bytes,
            "extract_seconds": round(listing.seconds, 2),
            "normalize_seconds": round(normalized.seconds, 2),
            "normalize_workers": normalized.workers,
            "total_seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "flag_counts": MetadataValue.json(built.flag_counts),
            "with_description": built.with_description,
            "vectors_reused": built.vectors_reused,
            "previous_rows": previous_rows if previous_rows is not None else -1,
            "max_row_drop_fraction": config.max_row_drop_fraction,
            "evaluation_failures": len(normalized.evaluation_failures),
            "evaluation_failures_sample": MetadataValue.json(
                normalized.evaluation_failures[:SHOWN_LIMIT]
            ),
            "invalid_meta_attributes": MetadataValue.json(
                dict(listing.invalid_meta_attributes)
                | {"by_wrapper": sum(len(fields) for fields in normalized.invalid_meta.values())}
            ),
            "value_issues": MetadataValue.json(dict(normalized.issues.most_common())),
            "channel_prefix_stripped": normalized.stripped_channel_prefix or "",
            "nix_stderr_lines": len(listing.stderr_lines),
            "nix_stderr_sample": MetadataValue.md(
                "```\n" + "\n".join(listing.stderr_lines[:SHOWN_LIMIT]) + "\n```"
            ),
            "embedding_model": embedding_backend.model_id,
            "embedding_dimensions": embedding_backend.dimensions,
            "dagster/column_schema": column_schema(built.schema),
        },
    )


def _row_count(snapshot: Snapshot) -> int | None:
    try:
        return open_packages(snapshot).count_rows()
    except Exception:
        return None


def attr_path_problems(attr_paths: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """Counts of rows, distinct attribute paths, and empty or null ones."""
    rows = len(attr_paths)
    empty = int(pc.sum(pc.or_kleene(pc.is_null(attr_paths), pc.equal(attr_paths, ""))).as_py() or 0)
    return {"rows": rows, "distinct": int(pc.count_distinct(attr_paths).as_py()), "empty": empty}


@asset_check(
    asset=nixpkgs_packages,
    name=UNIQUE_ATTR_PATH_CHECK,
    blocking=True,
    description="Every row has a non-empty attribute path, and no two rows share one.",
)
def attr_path_unique_and_non_empty(dataset_storage: DatasetStorage) -> AssetCheckResult:
    snapshot = dataset_storage.store("main").require_latest()
    counts = attr_path_problems(read_columns(open_packages(snapshot), ["attr_path"])["attr_path"])
    return AssetCheckResult(
        passed=counts["empty"] == 0 and counts["distinct"] == counts["rows"],
        metadata=counts | {"snapshot_uri": snapshot.uri},
    )


@asset_check(
    asset=nixpkgs_packages,
    name=ROW_COUNT_CHECK,
    blocking=True,
    description=(
        "The package count did not collapse against the previous materialization of the same "
        "channel: a drop of more than the run's max_row_drop_fraction (default "
        f"{DEFAULT_MAX_ROW_DROP:.0%}) fails."
    ),
)
def row_count_not_collapsed(context: AssetCheckExecutionContext) -> AssetCheckResult:
    history = recent_metadata(context, AssetKey("nixpkgs_packages"), limit=2)
    counts = [recorded_number(metadata, "dagster/row_count") for metadata in history]
    current = int(counts[0]) if counts and counts[0] is not None else None
    previous = int(counts[1]) if len(counts) > 1 and counts[1] is not None else None
    if current is None:
        return AssetCheckResult(passed=False, description="no materialization recorded a row count")
    recorded_drop = recorded_number(history[0], "max_row_drop_fraction")
    max_drop = DEFAULT_MAX_ROW_DROP if recorded_drop is None else recorded_drop
    problem = row_drop_problem(current, previous, max_drop)
    return AssetCheckResult(
        passed=problem is None,
        description=problem,
        metadata={
            "rows": current,
            "previous_rows": previous if previous is not None else -1,
            "max_row_drop_fraction": max_drop,
        },
    )
