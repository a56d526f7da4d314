"""Sensors: continuing the pipeline when Bedrock batch jobs end.

``bedrock_batch_sensor`` watches materializations of ``bedrock_embedding_jobs`` (each
records the ARNs of the jobs it submitted), polls ``GetModelInvocationJob`` for them, and
when every job of a submission has ended launches ``embedding_ingest_job`` with the ARNs
as run key, so each submission is ingested exactly once. It is a plain ``@sensor`` over the
asset's materializations rather than ``@asset_sensor``: an asset sensor moves its cursor
past a materialization on the first tick that sees it, and these jobs take hours. The cursor
holds the last materialization read plus the submissions still waiting.

With channels (FDNIX_CHANNELS) each submission is a materialization of one channel's
partition, and the ingest run continues that same partition.

Each tick makes one ``GetModelInvocationJob`` call per waiting job and never sleeps (ticks
time out after 60 s); the tick interval is ``BEDROCK_POLL_INTERVAL``. A submission still
running ``BEDROCK_MAX_WAIT_TIME`` seconds after it was recorded has its jobs stopped; the
ingest run then reports them as Stopped.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from fdnix_assets.assets.embeddings import JOB_ARNS_METADATA_KEY
from fdnix_assets.embedding.bedrock import RUNNING_STATUSES, TERMINAL_STATUSES
from fdnix_assets.embedding.resource import EmbeddingBackend
from fdnix_assets.jobs import embedding_ingest_job

SUBMISSION_ASSET = AssetKey("bedrock_embedding_jobs")
MATERIALIZATIONS_PER_TICK = 50


@dataclass
class PendingSubmission:
    """One materialization of ``bedrock_embedding_jobs`` whose jobs have not all ended."""

    storage_id: int
    arns: list[str]
    recorded_at: float
    stop_requested: bool = False
    # The channel partition the jobs were submitted for; None without channels.
    partition: str | None = None

    @property
    def run_key(self) -> str:
        key = ",".join(self.arns) if self.arns else f"bedrock_embedding_jobs:{self.storage_id}"
        # Two channels with the same new texts share job names (digests of the texts), so
        # the channel is part of the key: each channel ingests them into its own dataset.
        return f"{self.partition}:{key}" if self.partition else key


@dataclass
class BedrockSensorCursor:
    after_storage_id: int | None = None
    pending: list[PendingSubmission] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> "BedrockSensorCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            after_storage_id=data.get("after_storage_id"),
            pending=[PendingSubmission(**item) for item in data.get("pending", [])],
        )

    def serialize(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def submission_arns(metadata: dict[str, Any]) -> list[str]:
    """The job ARNs a materialization recorded (its ``job_arns`` JSON metadata)."""
    entry = metadata.get(JOB_ARNS_METADATA_KEY)
    value = getattr(entry, "value", entry)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(arn, str) for arn in value):
        raise ValueError(f"{JOB_ARNS_METADATA_KEY} metadata is not a list of ARNs: {value!r}")
    return list(value)


def ingest_run_request(submission: PendingSubmission, statuses: dict[str, str]) -> RunRequest:
    return RunRequest(
        run_key=submission.run_key,
        partition_key=submission.partition,
        run_config={
            "ops": {"package_embeddings": {"config": {"resubmit_failed_jobs": False}}},
        },
        tags={
            "fdnix/bedrock_jobs": str(len(submission.arns)),
            "fdnix/bedrock_statuses": ",".join(sorted(set(statuses.values()))) or "none",
            "fdnix/bedrock_submission": str(submission.storage_id),
        },
    )


def evaluate_bedrock_jobs(
    context: SensorEvaluationContext,
    embedding_backend: EmbeddingBackend,
    now: float | None = None,
) -> SensorResult:
    """One tick: picks up new submissions, polls waiting jobs, launches finished ingests."""
    now = time.time() if now is None else now
    cursor = BedrockSensorCursor.parse(context.cursor)
    if cursor.after_storage_id is None:
        # First tick: only the latest submission (of each channel) matters, not the asset's
        # whole history.
        latest = context.instance.fetch_materializations(
            SUBMISSION_ASSET, limit=MATERIALIZATIONS_PER_TICK, ascending=False
        ).records
        latest_by_partition = {}
        for record in latest:
            latest_by_partition.setdefault(record.partition_key, record)
        records = sorted(latest_by_partition.values(), key=lambda record: record.storage_id)
    else:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=SUBMISSION_ASSET, after_storage_id=cursor.after_storage_id
            ),
            limit=MATERIALIZATIONS_PER_TICK,
            ascending=True,
        ).records
    for record in records:
        materialization = record.asset_materialization
        metadata = dict(materialization.metadata) if materialization else {}
        cursor.pending.append(
            PendingSubmission(
                storage_id=record.storage_id,
                arns=submission_arns(metadata),
                recorded_at=record.timestamp,
                partition=record.partition_key,
            )
        )
        cursor.after_storage_id = record.storage_id
    if not cursor.pending:
        return SensorResult(
            skip_reason=SkipReason("no Bedrock submission is waiting"), cursor=cursor.serialize()
        )

    client = embedding_backend.bedrock_client() if any(p.arns for p in cursor.pending) else None
    run_requests = []
    waiting = []
    still_pending = []
    for submission in cursor.pending:
        statuses = {}
        for arn in submission.arns:
            statuses[arn] = client.get_model_invocation_job(jobIdentifier=arn)["status"]
        running = [arn for arn, status in statuses.items() if status not in TERMINAL_STATUSES]
        if not running:
            context.log.info(
                f"Bedrock submission {submission.storage_id}"
                + (f" for channel {submission.partition}" if submission.partition else "")
                + " ended "
                f"({', '.join(sorted(set(statuses.values()))) or 'no jobs'}): launching ingest"
            )
            run_requests.append(ingest_run_request(submission, statuses))
            continue
        waited = now - submission.recorded_at
        if waited > embedding_backend.bedrock_max_wait_time and not submission.stop_requested:
            for arn in running:
                if statuses[arn] in RUNNING_STATUSES - {"Stopping"}:
                    context.log.warning(
                        f"stopping Bedrock job {arn}: still {statuses[arn]} after {waited:.0f} s "
                        f"(BEDROCK_MAX_WAIT_TIME={embedding_backend.bedrock_max_wait_time:g})"
                    )
                    client.stop_model_invocation_job(jobIdentifier=arn)
            submission.stop_requested = True
        waiting.append(f"{len(running)} of {len(submission.arns)} job(s) {waited:.0f} s")
        still_pending.append(submission)
    cursor.pending = still_pending
    if run_requests:
        return SensorResult(run_requests=run_requests, cursor=cursor.serialize())
    return SensorResult(
        skip_reason=SkipReason(f"waiting for Bedrock: {'; '.join(waiting)}"),
        cursor=cursor.serialize(),
    )


def build_bedrock_batch_sensor(poll_interval_seconds: int = 60) -> SensorDefinition:
    """The sensor, ticking every ``poll_interval_seconds`` (BEDROCK_POLL_INTERVAL)."""

    @sensor(
        name="bedrock_batch_sensor",
        job=embedding_ingest_job,
        minimum_interval_seconds=poll_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Polls the Bedrock batch jobs recorded by bedrock_embedding_jobs; when a "
            "submission's jobs have all ended, launches embedding_ingest_job (run key: the "
            "job ARNs) to ingest the vectors and continue to the minified dataset."
        ),
    )
    def bedrock_batch_sensor(
        context: SensorEvaluationContext, embedding_backend: EmbeddingBackend
    ) -> SensorResult:
        return evaluate_bedrock_jobs(context, embedding_backend)

    return bedrock_batch_sensor


bedrock_batch_sensor = build_bedrock_batch_sensor()
