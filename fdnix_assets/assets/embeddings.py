"""The embedding phase: the main dataset gets its vectors and its vector index.

Two assets. ``package_embeddings`` does the whole phase in one step (local model, or Bedrock
waited for inline, which is what ``full_job`` and ``embedding_job`` run).
``bedrock_embedding_jobs`` only submits the Bedrock batch jobs and records their ARNs; the
``bedrock_batch_sensor`` (fdnix_assets/sensors.py) then polls them and launches
``embedding_ingest_job``, whose ``package_embeddings`` re-attaches to the finished jobs by
name, ingests their output and continues to the minified dataset. Both paths pay for each
text once: job names are digests of what they embed.
"""

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
from botocore.exceptions import ClientError
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from fdnix_assets import schema as s
from fdnix_assets.assets.history import recent_metadata, recorded_number
from fdnix_assets.datasets import DatasetProvenance, open_packages
from fdnix_assets.embedding.bedrock import BedrockReport
from fdnix_assets.embedding.checkpoint import EmbeddingCheckpoint
from fdnix_assets.embedding.phase import (
    EmbeddingModel,
    compact,
    find_work,
    open_table,
    pending_requests,
    vector_coverage,
    write_vectors,
)
from fdnix_assets.embedding.resource import EmbeddingBackend, VectorIndexSettings
from fdnix_assets.embedding.vector_index import (
    MIN_ROWS_FOR_INDEX,
    build_vector_index,
    index_is_current,
)
from fdnix_assets.io_managers import DATASET_METADATA_KEY, StagedDataset
from fdnix_assets.resources import DatasetStorage
from fdnix_assets.storage import Snapshot

SHOWN_LIMIT = 50
JOB_ARNS_METADATA_KEY = "job_arns"
CHECK_SAMPLE_ROWS = 2_000
UNIT_NORM_TOLERANCE = 0.02
DEFAULT_MIN_VECTOR_COVERAGE = 0.99


class EmbeddingConfig(Config):
    resubmit_failed_jobs: bool = Field(
        default=True,
        description=(
            "Bedrock only: when the latest attempt of a batch job for these texts ended "
            "Failed, Stopped or Expired, submit a new attempt (true) or report that failure "
            "(false; the sensor's ingest run does this, so a failed job surfaces instead of "
            "being paid for again)."
        ),
    )
    embed_sample: int | None = Field(
        default=None,
        description=(
            "Embed only a fixed sample of this many packages (those with the smallest "
            "content hashes); the others keep a null vector. For benchmarks on machines too "
            "slow to embed everything (benchmarks/run.py --embed-sample)."
        ),
    )


def _model(backend: EmbeddingBackend) -> EmbeddingModel:
    return EmbeddingModel(backend.model_id, backend.dimensions, backend.backend)


@asset(
    key="package_embeddings",
    group_name="fdnix",
    kinds={"lancedb", "pytorch", "bedrock"},
    owners=["team:fdnix"],
    io_manager_key="dataset_io_manager",
    metadata={DATASET_METADATA_KEY: "main"},
    description=(
        "The main dataset with a vector for every package (fdnix-data.lancedb, column "
        "vector) and the vector index over them. Only packages whose embedding text changed "
        "since the last run are embedded (the rest keep their vector by content hash); a new "
        "model or dimension re-embeds everything. A package that could not be embedded has a "
        "null vector, never zeros. Backend: EMBEDDING_BACKEND (local all-MiniLM-L6-v2, or "
        "Amazon Titan through Bedrock batch inference, waited for inline). The local backend "
        "checkpoints each chunk it embeds, so a rerun after a killed run embeds only what "
        "the killed run had not (vectors_from_checkpoint)."
    ),
)
def package_embeddings(
    context: AssetExecutionContext,
    config: EmbeddingConfig,
    nixpkgs_packages: Snapshot,
    dataset_storage: DatasetStorage,
    embedding_backend: EmbeddingBackend,
    vector_index: VectorIndexSettings,
) -> Iterator[Output[StagedDataset]]:
    started = time.perf_counter()
    dataset_storage.remove_abandoned_runs(context.run_id, log=context.log.info)
    work_dir = dataset_storage.work_dir / context.run_id / "embeddings"
    staged = work_dir / "fdnix-data.lancedb"
    model = _model(embedding_backend)
    checkpoint = EmbeddingCheckpoint(
        dataset_storage.work_dir, model.model_id, model.dimensions, warn=context.log.warning
    )
    try:
        dataset_storage.store("main").checkout(nixpkgs_packages, staged)
        work = find_work(staged, model, config.embed_sample, checkpoint)
        if work.reembed_reason:
            context.log.warning(f"re-embedding all {work.rows:,} packages: {work.reembed_reason}")
        if work.from_checkpoint:
            context.log.info(
                f"{work.from_checkpoint:,} vectors came from the checkpoint of a run that "
                f"did not finish ({checkpoint.directory}): not embedded again"
            )
        context.log.info(
            f"{len(work.requests):,} of {work.rows:,} packages need a vector "
            f"({work.reused:,} kept, {work.from_checkpoint:,} from the checkpoint); "
            f"backend {model.backend}, model {model.model_id}"
            + (f"; sample of {config.embed_sample:,} packages" if config.embed_sample else "")
        )

        embed_started = time.perf_counter()
        bedrock: BedrockReport | None = None
        if embedding_backend.is_bedrock:
            bedrock = embedding_backend.bedrock_embedder(log=context.log.info).embed(
                work.requests, resubmit_failed=config.resubmit_failed_jobs
            )
            vectors, failed, truncated = bedrock.vectors, bedrock.failed, bedrock.truncated
        else:
            result = embedding_backend.local_embedder().embed(
                [request.text for request in work.requests],
                progress=lambda done, total, seconds: context.log.info(
                    f"embedded {done:,} of {total:,} texts in {seconds:.0f} s "
                    f"({done / max(seconds, 1e-9):.0f}/s)"
                ),
                on_chunk=lambda positions, chunk: checkpoint.save(
                    [work.requests[position].content_hash for position in positions], chunk
                ),
            )
            vectors = {
                request.content_hash: vector
                for request, vector in zip(work.requests, result.vectors, strict=True)
            }
            failed, truncated = {}, result.truncated
        embed_seconds = time.perf_counter() - embed_started

        written = write_vectors(staged, work.requests, vectors, model.dimensions)
        if written or work.from_checkpoint:
            compact(staged)
        with_vector, rows = vector_coverage(staged)
        plan = vector_index.plan(with_vector, model.dimensions)
        index_seconds = 0.0
        if plan is not None and index_is_current(open_table(staged), plan):
            context.log.info("the vector index already covers every vector: kept as it is")
        elif plan is None:
            context.log.info(
                f"no vector index: {with_vector:,} vectors are searched exactly "
                f"(an index pays off from {MIN_ROWS_FOR_INDEX:,}, or VECTOR_INDEX_PARTITIONS=0)"
            )
        else:
            index_seconds = build_vector_index(open_table(staged), plan)
            context.log.info(
                f"vector index IVF_PQ ({plan.partitions} partitions, {plan.sub_vectors} "
                f"sub-vectors) over {with_vector:,} vectors in {index_seconds:.1f} s"
            )

        failures = {
            request.attr_path: failed[request.content_hash]
            for request in work.requests
            if request.content_hash in failed
        }
        metadata = {
            "dagster/row_count": rows,
            "texts_embedded": written,
            "texts_to_embed": len(work.requests) + work.from_checkpoint,
            "vectors_from_checkpoint": work.from_checkpoint,
            "texts_reused": work.reused,
            "texts_failed": len(work.requests) - written,
            "texts_truncated": truncated,
            "embed_seconds": round(embed_seconds, 2),
            "texts_per_second": round(written / embed_seconds, 1) if embed_seconds > 0 else 0.0,
            "embedding_model": model.model_id,
            "embedding_dimensions": model.dimensions,
            "embedding_backend": model.backend,
            "reembed_reason": work.reembed_reason or "",
            "embed_sample": config.embed_sample or 0,
            "vector_coverage": round(with_vector / rows, 6) if rows else 0.0,
            "rows_with_vector": with_vector,
            "vector_index": MetadataValue.json(
                plan.as_metadata() if plan else {"index_type": "none"}
            ),
            "vector_index_seconds": round(index_seconds, 2),
            "failed_sample": MetadataValue.json(
                [f"{path}: {failures[path]}" for path in sorted(failures)[:SHOWN_LIMIT]]
            ),
            "total_seconds": round(time.perf_counter() - started, 2),
        }
        if bedrock is not None:
            metadata |= {
                JOB_ARNS_METADATA_KEY: MetadataValue.json(bedrock.job_arns),
                "bedrock_jobs": MetadataValue.json([state.summary() for state in bedrock.jobs]),
                "bedrock_on_demand": bedrock.on_demand,
                "bedrock_retried_records": bedrock.retried,
                "bedrock_input_tokens": bedrock.input_tokens,
                "bedrock_job_errors": MetadataValue.json(bedrock.job_errors),
            }
        yield Output(StagedDataset(path=staged, rows=rows), metadata=metadata)
        # Reached only once the IO manager published the dataset: its vectors are safe there.
        checkpoint.delete()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    if bedrock is not None and bedrock.job_errors:
        # The vectors that did arrive are published above; the run still fails, naming why.
        raise Failure(
            description=(
                f"{len(bedrock.job_errors)} Bedrock problem(s); the {written:,} vectors that "
                "did arrive were saved, the rest stay null until the next run: "
                + " | ".join(bedrock.job_errors[:5])
            ),
            metadata={"bedrock_job_errors": MetadataValue.json(bedrock.job_errors)},
        )


@asset(
    key="bedrock_embedding_jobs",
    group_name="fdnix",
    kinds={"bedrock", "s3"},
    owners=["team:fdnix"],
    description=(
        "The Bedrock batch inference jobs that embed the packages still without a vector "
        "(submitted, or re-attached when they already exist). Its materialization records "
        "the job ARNs; bedrock_batch_sensor polls them and, when they end, launches "
        "embedding_ingest_job to read the vectors and build the rest of the pipeline. Not "
        "part of full_job, which waits for Bedrock inline instead."
    ),
)
def bedrock_embedding_jobs(
    context: AssetExecutionContext,
    nixpkgs_packages: Snapshot,
    embedding_backend: EmbeddingBackend,
) -> MaterializeResult:
    if not embedding_backend.is_bedrock:
        raise Failure(
            description=(
                "bedrock_embedding_jobs submits Bedrock batch jobs, but EMBEDDING_BACKEND is "
                f"{embedding_backend.backend!r}: run embedding_job (or full_job) instead"
            )
        )
    work = pending_requests(open_packages(nixpkgs_packages), _model(embedding_backend))
    embedder = embedding_backend.bedrock_embedder(log=context.log.info)
    try:
        plan, states = embedder.submit(work.requests)
    except ClientError as error:
        details = error.response.get("Error", {})
        raise Failure(
            description=(
                f"submitting Bedrock batch jobs for {len(work.requests):,} texts failed: "
                f"{details.get('Code', '')}: {details.get('Message', error)}. Jobs submitted "
                "before the failure are re-attached by the next run, not paid for twice."
            )
        ) from None
    context.log.info(
        f"{len(states)} Bedrock job(s) for {plan.batch_records:,} texts; "
        f"{len(plan.on_demand):,} texts are left for on-demand calls in the ingest run"
    )
    return MaterializeResult(
        metadata={
            JOB_ARNS_METADATA_KEY: MetadataValue.json([state.arn for state in states]),
            "jobs": MetadataValue.json([state.summary() for state in states]),
            "texts_to_embed": len(work.requests),
            "texts_in_jobs": plan.batch_records,
            "texts_on_demand": len(plan.on_demand),
            "texts_reused": work.reused,
            "snapshot_uri": nixpkgs_packages.uri,
            "submitted_at": datetime.now(UTC).isoformat(),
            "embedding_model": embedding_backend.model_id,
            "embedding_dimensions": embedding_backend.dimensions,
        }
    )


class VectorCoverageConfig(Config):
    min_coverage: float = Field(
        default=DEFAULT_MIN_VECTOR_COVERAGE,
        ge=0.0,
        le=1.0,
        description=(
            "Below this fraction of packages with a vector the check fails with ERROR and "
            "blocks the minified dataset; between it and 1 it only warns."
        ),
    )


@asset_check(
    asset=package_embeddings,
    name="vector_coverage",
    blocking=True,
    description=(
        "Every package has a vector (packages without one are only found by text). A few "
        f"missing warn; fewer than min_coverage (default {DEFAULT_MIN_VECTOR_COVERAGE:.0%}) "
        "with a vector fails and blocks the minified dataset."
    ),
)
def vector_coverage_check(
    context: AssetCheckExecutionContext,
    config: VectorCoverageConfig,
    package_embeddings: Snapshot,
) -> AssetCheckResult:
    table = open_packages(package_embeddings)
    rows = table.count_rows()
    missing = table.count_rows("vector IS NULL")
    coverage = (rows - missing) / rows if rows else 0.0
    # A run that embedded only a sample (embed_sample) leaves the rest null on purpose.
    sampled = _recorded_embed_sample(context) > 0
    sample = (
        table.search()
        .where("vector IS NULL")
        .select(["attr_path"])
        .limit(SHOWN_LIMIT)
        .to_arrow()["attr_path"]
        .to_pylist()
        if missing
        else []
    )
    return AssetCheckResult(
        passed=missing == 0,
        severity=(
            AssetCheckSeverity.WARN
            if sampled or coverage >= config.min_coverage
            else AssetCheckSeverity.ERROR
        ),
        description=(
            "every package has a vector"
            if missing == 0
            else f"{missing:,} of {rows:,} packages have no vector "
            f"(coverage {coverage:.2%}, minimum {config.min_coverage:.2%}"
            + (", an embed_sample run)" if sampled else ")")
        ),
        metadata={
            "rows": rows,
            "rows_without_vector": missing,
            "coverage": round(coverage, 6),
            "min_coverage": config.min_coverage,
            "without_vector_sample": MetadataValue.json(sample),
        },
    )


def _recorded_embed_sample(context: AssetCheckExecutionContext) -> int:
    """The embed_sample of the latest materialization (of the run's channel partition)."""
    history = recent_metadata(context, package_embeddings.key)
    sample = recorded_number(history[0] if history else None, "embed_sample")
    return int(sample or 0)


@asset_check(
    asset=package_embeddings,
    name="vector_dimension",
    blocking=True,
    description=(
        "The vector column has the backend's dimension, the table records the backend's "
        "model, and the vectors are finite and unit length (no zero placeholders). Blocking: "
        "vectors a query cannot be compared with never reach the minified dataset."
    ),
)
def vector_dimension_check(
    package_embeddings: Snapshot, embedding_backend: EmbeddingBackend
) -> AssetCheckResult:
    table = open_packages(package_embeddings)
    problems = []
    expected_type = s.vector_type(embedding_backend.dimensions)
    actual_type = table.schema.field("vector").type
    if actual_type != expected_type:
        problems.append(f"vector column is {actual_type}, expected {expected_type}")
    provenance = DatasetProvenance.from_schema(table.schema)
    if provenance is None:
        problems.append("the table records no provenance")
    elif (provenance.embedding_model, provenance.embedding_dimensions) != (
        embedding_backend.model_id,
        embedding_backend.dimensions,
    ):
        problems.append(
            f"the table records {provenance.embedding_model} ({provenance.embedding_dimensions}"
            f"-d), the backend is {embedding_backend.model_id} ({embedding_backend.dimensions}-d)"
        )
    sample = (
        table.search()
        .where("vector IS NOT NULL")
        .select(["vector"])
        .limit(CHECK_SAMPLE_ROWS)
        .to_arrow()["vector"]
    )
    norms: list[float] = []
    if len(sample) and actual_type == expected_type:
        matrix = np.asarray(sample.combine_chunks().flatten()).reshape(len(sample), -1)
        if not np.isfinite(matrix).all():
            problems.append("some vectors hold NaN or infinite values")
        norms = np.linalg.norm(matrix, axis=1).tolist()
        off = sum(1 for norm in norms if abs(norm - 1.0) > UNIT_NORM_TOLERANCE)
        if off:
            problems.append(f"{off} of {len(norms)} sampled vectors are not unit length")
    return AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or "vectors match the backend",
        metadata={
            "vector_type": str(actual_type),
            "expected_type": str(expected_type),
            "sampled_vectors": len(norms),
            "min_norm": round(min(norms), 4) if norms else 0.0,
            "max_norm": round(max(norms), 4) if norms else 0.0,
        },
    )
