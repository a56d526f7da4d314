"""The Bedrock backend: Amazon Titan Text Embeddings through batch inference.

How the service works, and what this module does about each part:

- A batch job reads one JSONL file of ``{"recordId", "modelInput"}`` lines from S3 and writes
  ``<output uri>/<job id>/<input file>.out`` (one line per record, in no particular order,
  each with ``modelOutput`` or ``error``) plus ``manifest.json.out`` with the counts. We give
  records short ids (``R0000000001``) and map them back to content hashes ourselves, join the
  output on the id, and check every line and the manifest against what we submitted.
- A job takes between 100 and (by default quota) 50,000 records; at most
  ``BEDROCK_BATCH_SIZE`` go in one job, in balanced chunks. Fewer than 100 records go through
  on-demand ``InvokeModel`` instead, one call each.
- Jobs cost money, so a retried run must never pay twice: the job name is a digest of the
  model, the dimension and the content hashes it embeds (plus an attempt number), and the
  same string is the ``clientRequestToken``. Before submitting we look for a job of that name
  (``ListModelInvocationJobs``) and re-attach to it unless its last attempt ended Failed,
  Stopped or Expired.
- Statuses: ``Completed`` is read; ``PartiallyCompleted`` is read and only its failed records
  are retried (once, as a smaller job or on demand); ``Failed``, ``Stopped`` and ``Expired``
  become clear errors while the vectors of the jobs that did finish are kept; a job still
  running after ``BEDROCK_MAX_WAIT_TIME`` seconds of waiting is stopped.

Everything up to the boto3 calls is plain functions over plain data, tested without AWS or
Dagster; :class:`BedrockBatchEmbedder` performs the calls.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

MIN_BATCH_RECORDS = 100
"""Bedrock refuses batch jobs with fewer records (a service quota)."""
MAX_BATCH_RECORDS = 50_000
"""The default quota of records per batch job input file."""
TITAN_MAX_INPUT_CHARS = 50_000
"""Titan Text Embeddings v2 takes at most 50,000 characters (and 8,192 tokens)."""

RUNNING_STATUSES = frozenset({"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"})
FINISHED_STATUSES = frozenset({"Completed", "PartiallyCompleted"})
FAILED_STATUSES = frozenset({"Failed", "Stopped", "Expired"})
TERMINAL_STATUSES = FINISHED_STATUSES | FAILED_STATUSES

JOB_NAME_PREFIX = "fdnix-embed"
DEFAULT_KEY_PREFIX = "fdnix-bedrock"
INPUT_FILE_NAME = "records.jsonl"
MANIFEST_FILE_NAME = "manifest.json.out"
REJECTED_MARKER_NAME = "fdnix-rejected.json"
"""Written beside a finished job's output that failed its checks, so later runs submit a new
attempt instead of re-reading the same damaged output forever."""
STOP_SETTLE_SECONDS = 60.0

_ATTEMPT_RE = re.compile(r"^(?P<base>.+)-a(?P<attempt>\d+)$")

Log = Callable[[str], None]


class BedrockError(RuntimeError):
    """A Bedrock job or its output cannot be used; the message names the job and the problem."""


class BedrockOutputError(BedrockError):
    """A job's output files are missing, malformed or disagree with what was submitted."""


@dataclass(frozen=True)
class EmbeddingRequest:
    """One text to embed, keyed by the content hash its vector will be stored under."""

    content_hash: str
    attr_path: str
    text: str


@dataclass(frozen=True)
class PlannedJob:
    """One batch job: its deterministic name and the records it carries, by record id."""

    base_name: str
    records: dict[str, EmbeddingRequest]


@dataclass(frozen=True)
class BatchPlan:
    """How a set of texts is split between batch jobs and on-demand calls."""

    jobs: list[PlannedJob]
    on_demand: list[EmbeddingRequest]

    @property
    def batch_records(self) -> int:
        return sum(len(job.records) for job in self.jobs)


@dataclass(frozen=True)
class ModelInput:
    """What every record asks Titan for."""

    model_id: str
    dimensions: int
    normalize: bool = True

    def body(self, text: str) -> dict[str, Any]:
        return {"inputText": text, "dimensions": self.dimensions, "normalize": self.normalize}


def truncate_for_model(text: str, limit: int = TITAN_MAX_INPUT_CHARS) -> tuple[str, bool]:
    """``text`` cut to what the model accepts, and whether it had to be cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def record_id(index: int) -> str:
    """Short, fixed-width ids (``R0000000001``), the shape Bedrock's own examples use."""
    return f"R{index:010d}"


def job_base_name(model: ModelInput, content_hashes: Iterable[str]) -> str:
    """A name that only this exact set of texts, model and dimension produces."""
    digest = hashlib.sha256(f"{model.model_id}\x00{model.dimensions}\x00".encode())
    for content_hash in content_hashes:
        digest.update(content_hash.encode())
        digest.update(b"\n")
    return f"{JOB_NAME_PREFIX}-{digest.hexdigest()[:32]}"


def attempt_name(base_name: str, attempt: int) -> str:
    return f"{base_name}-a{attempt}"


def parse_attempt(job_name: str) -> tuple[str, int] | None:
    """(base name, attempt) of a job name this module gave, or None for a foreign name."""
    match = _ATTEMPT_RE.match(job_name)
    if match is None:
        return None
    return match.group("base"), int(match.group("attempt"))


def check_batch_size(batch_size: int) -> None:
    if not MIN_BATCH_RECORDS <= batch_size <= MAX_BATCH_RECORDS:
        raise ValueError(
            f"BEDROCK_BATCH_SIZE={batch_size} is outside what a Bedrock batch job takes: "
            f"{MIN_BATCH_RECORDS:,} to {MAX_BATCH_RECORDS:,} records per job"
        )


def _chunk_sizes(total: int, batch_size: int) -> tuple[list[int], int]:
    """Job sizes for ``total`` records (each 100..batch_size), and how many are left over."""
    if total < MIN_BATCH_RECORDS:
        return [], total
    jobs = math.ceil(total / batch_size)
    if total // jobs >= MIN_BATCH_RECORDS:
        # Balanced, so no job is a tiny tail that Bedrock would refuse.
        base, extra = divmod(total, jobs)
        return [base + 1 if i < extra else base for i in range(jobs)], 0
    full, rest = divmod(total, batch_size)
    sizes = [batch_size] * full
    if rest >= MIN_BATCH_RECORDS:
        return [*sizes, rest], 0
    return sizes, rest


def plan_batches(
    requests: Sequence[EmbeddingRequest], model: ModelInput, batch_size: int
) -> BatchPlan:
    """Splits texts into batch jobs of at most ``batch_size`` records; the rest go on demand.

    Records are sorted by content hash first, so the same texts always make the same jobs
    (and the same job names), whatever order the dataset lists them in.
    """
    check_batch_size(batch_size)
    unique = {request.content_hash: request for request in requests}
    ordered = [unique[content_hash] for content_hash in sorted(unique)]
    sizes, leftover = _chunk_sizes(len(ordered), batch_size)
    jobs = []
    start = 0
    for size in sizes:
        chunk = ordered[start : start + size]
        start += size
        jobs.append(
            PlannedJob(
                base_name=job_base_name(model, (request.content_hash for request in chunk)),
                records={record_id(i + 1): request for i, request in enumerate(chunk)},
            )
        )
    return BatchPlan(jobs=jobs, on_demand=ordered[start : start + leftover])


def job_input_lines(job: PlannedJob, model: ModelInput) -> bytes:
    """The JSONL file Bedrock reads for ``job``."""
    lines = [
        json.dumps(
            {"recordId": rid, "modelInput": model.body(request.text)},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for rid, request in job.records.items()
    ]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class ParsedOutput:
    """One job's output lines joined back to its records."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    """Record id to vector."""
    errors: dict[str, str] = field(default_factory=dict)
    """Record id to Bedrock's error for it."""
    input_tokens: int = 0


def parse_output_lines(
    content: bytes,
    source: str,
    known_ids: Mapping[str, object],
    dimensions: int,
    into: ParsedOutput | None = None,
) -> ParsedOutput:
    """Reads one ``.jsonl.out`` file; any malformed, duplicate, unknown or wrong-sized record
    raises :class:`BedrockOutputError` naming ``source``, the line and the record."""
    parsed = into if into is not None else ParsedOutput()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source} line {number}"
        try:
            line = json.loads(raw)
        except ValueError as error:
            raise BedrockOutputError(
                f"{where} is not valid JSON ({error}): {raw[:120]!r}"
            ) from None
        if not isinstance(line, dict) or not isinstance(line.get("recordId"), str):
            raise BedrockOutputError(f"{where} has no recordId: {raw[:120]!r}")
        rid = line["recordId"]
        if rid not in known_ids:
            raise BedrockOutputError(f"{where} names record {rid!r}, which the job never had")
        if rid in parsed.vectors or rid in parsed.errors:
            raise BedrockOutputError(f"{where} repeats record {rid!r}")
        error = line.get("error")
        if error:
            if isinstance(error, dict):
                code = error.get("errorCode", "")
                message = error.get("errorMessage", "")
                parsed.errors[rid] = f"{code}: {message}".strip(": ")
            else:
                parsed.errors[rid] = str(error)
            continue
        output = line.get("modelOutput")
        embedding = output.get("embedding") if isinstance(output, dict) else None
        if not isinstance(embedding, list):
            raise BedrockOutputError(
                f"{where} (record {rid}) has neither an embedding nor an error"
            )
        if len(embedding) != dimensions:
            raise BedrockOutputError(
                f"{where} (record {rid}) has a {len(embedding)}-dimensional embedding; "
                f"{dimensions} were asked for"
            )
        try:
            vector = np.asarray(embedding, dtype=np.float32)
        except (TypeError, ValueError):
            raise BedrockOutputError(f"{where} (record {rid}) has non-numeric values") from None
        if not np.isfinite(vector).all():
            raise BedrockOutputError(f"{where} (record {rid}) has NaN or infinite values")
        parsed.vectors[rid] = vector
        parsed.input_tokens += int(output.get("inputTextTokenCount") or 0)
    return parsed


def check_output_complete(
    parsed: ParsedOutput,
    manifest: Mapping[str, Any] | None,
    expected: int,
    job: str,
    partial: bool = False,
) -> None:
    """The manifest's counts agree with the lines, and (unless the job was stopped part way,
    ``partial``) every submitted record came back."""
    if manifest is None:
        raise BedrockOutputError(
            f"job {job} has no {MANIFEST_FILE_NAME}: its output cannot be checked as complete"
        )
    returned = len(parsed.vectors) + len(parsed.errors)
    counts = {
        "totalRecordCount": expected,
        "processedRecordCount": returned,
        "successRecordCount": len(parsed.vectors),
        "errorRecordCount": len(parsed.errors),
    }
    for key, actual in counts.items():
        value = manifest.get(key)
        if value is not None and int(value) != actual:
            raise BedrockOutputError(
                f"job {job}: {MANIFEST_FILE_NAME} says {key}={value}, but the output holds {actual}"
            )
    if not partial and returned != expected:
        raise BedrockOutputError(
            f"job {job}: {expected:,} records were submitted, {returned:,} came back"
        )


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def job_id_of(job_arn: str) -> str:
    return job_arn.rsplit("/", 1)[-1]


@dataclass
class JobState:
    """A submitted (or re-attached) job and what became of it."""

    job: PlannedJob
    name: str
    arn: str
    attached: bool
    status: str = "Submitted"
    message: str = ""
    output_uri: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arn": self.arn,
            "status": self.status,
            "records": len(self.job.records),
            "re_attached": self.attached,
        }


@dataclass
class BedrockReport:
    """What one Bedrock embedding pass produced."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    """Content hash to vector."""
    failed: dict[str, str] = field(default_factory=dict)
    """Content hash to the error that kept it from a vector (after the retry)."""
    job_errors: list[str] = field(default_factory=list)
    """Jobs that failed, expired, were stopped or wrote unusable output."""
    jobs: list[JobState] = field(default_factory=list)
    on_demand: int = 0
    retried: int = 0
    truncated: int = 0
    input_tokens: int = 0

    @property
    def job_arns(self) -> list[str]:
        return [state.arn for state in self.jobs]


class BedrockBatchEmbedder:
    """Runs the plan against Bedrock and S3 (boto3 clients; endpoints from the environment)."""

    def __init__(
        self,
        *,
        model: ModelInput,
        role_arn: str,
        input_bucket: str,
        output_bucket: str,
        bedrock: Any,
        runtime: Any,
        s3: Any,
        batch_size: int = 10_000,
        poll_interval: float = 60.0,
        max_wait: float = 7_200.0,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        log: Log = print,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        check_batch_size(batch_size)
        self.model = model
        self.role_arn = role_arn
        self.input_bucket = input_bucket
        self.output_bucket = output_bucket
        self.bedrock = bedrock
        self.runtime = runtime
        self.s3 = s3
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.key_prefix = key_prefix.strip("/")
        self.log = log
        self.sleep = sleep

    def prepare(self, requests: Sequence[EmbeddingRequest]) -> tuple[list[EmbeddingRequest], int]:
        """Requests with their text cut to the model's limit, and how many were cut."""
        prepared = []
        truncated = 0
        for request in requests:
            text, cut = truncate_for_model(request.text)
            truncated += cut
            prepared.append(EmbeddingRequest(request.content_hash, request.attr_path, text))
        return prepared, truncated

    def plan(self, requests: Sequence[EmbeddingRequest]) -> BatchPlan:
        return plan_batches(requests, self.model, self.batch_size)

    def input_uri(self, name: str) -> str:
        return f"s3://{self.input_bucket}/{self.key_prefix}/{name}/input/{INPUT_FILE_NAME}"

    def output_uri(self, name: str) -> str:
        return f"s3://{self.output_bucket}/{self.key_prefix}/{name}/output/"

    def find_attempts(self, base_name: str) -> list[dict[str, Any]]:
        """Earlier jobs of this name (every attempt), oldest attempt first."""
        found = []
        kwargs: dict[str, Any] = {"nameContains": base_name, "maxResults": 100}
        while True:
            page = self.bedrock.list_model_invocation_jobs(**kwargs)
            for summary in page.get("invocationJobSummaries", []):
                parsed = parse_attempt(summary.get("jobName", ""))
                if parsed is not None and parsed[0] == base_name:
                    found.append((parsed[1], summary))
            token = page.get("nextToken")
            if not token:
                break
            kwargs["nextToken"] = token
        return [summary for _, summary in sorted(found, key=lambda item: item[0])]

    def submit_or_attach(self, job: PlannedJob, *, resubmit_failed: bool = True) -> JobState:
        """Re-attaches to this job's latest attempt, or submits a new one.

        A latest attempt that is running or finished is re-attached (nothing is paid twice).
        One that ended Failed, Stopped or Expired is returned as it is when
        ``resubmit_failed`` is false, and otherwise followed by a new attempt.
        """
        attempts = self.find_attempts(job.base_name)
        if attempts:
            latest = attempts[-1]
            status = latest.get("status", "")
            rejected = status in FINISHED_STATUSES and self.output_rejected(latest["jobName"])
            if (status not in FAILED_STATUSES and not rejected) or not resubmit_failed:
                self.log(
                    f"re-attaching to Bedrock job {latest['jobName']} ({latest['jobArn']}), "
                    f"status {status}, {len(job.records):,} records"
                )
                return JobState(
                    job=job,
                    name=latest["jobName"],
                    arn=latest["jobArn"],
                    attached=True,
                    status=status,
                    message=latest.get("message", "") or "",
                    output_uri=latest.get("outputDataConfig", {})
                    .get("s3OutputDataConfig", {})
                    .get("s3Uri", ""),
                )
            self.log(
                f"Bedrock job {latest['jobName']} ended {status}"
                + (f" ({latest.get('message')})" if latest.get("message") else "")
                + (" but its output was rejected" if rejected else "")
                + "; submitting a new attempt"
            )
        attempt = len(attempts) + 1
        name = attempt_name(job.base_name, attempt)
        input_uri = self.input_uri(name)
        bucket, key = split_s3_uri(input_uri)
        self.s3.put_object(Bucket=bucket, Key=key, Body=job_input_lines(job, self.model))
        output_uri = self.output_uri(name)
        response = self.bedrock.create_model_invocation_job(
            jobName=name,
            roleArn=self.role_arn,
            clientRequestToken=name,
            modelId=self.model.model_id,
            inputDataConfig={"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": input_uri}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
        )
        arn = response["jobArn"]
        self.log(f"submitted Bedrock job {name} ({arn}): {len(job.records):,} records")
        return JobState(job=job, name=name, arn=arn, attached=False, output_uri=output_uri)

    def output_rejected(self, name: str) -> bool:
        """Whether an earlier run found the output of job ``name`` damaged."""
        bucket, key = split_s3_uri(self.output_uri(name) + REJECTED_MARKER_NAME)
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def reject_output(self, state: JobState, reason: str) -> None:
        """Records that ``state``'s output failed its checks (best effort)."""
        bucket, key = split_s3_uri(self.output_uri(state.name) + REJECTED_MARKER_NAME)
        marker = {"job_arn": state.arn, "reason": reason}
        try:
            self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(marker).encode())
        except Exception as error:
            self.log(f"could not record that job {state.name}'s output was rejected: {error}")

    def refresh(self, state: JobState) -> JobState:
        described = self.bedrock.get_model_invocation_job(jobIdentifier=state.arn)
        state.status = described.get("status", "")
        state.message = described.get("message", "") or ""
        state.output_uri = (
            described.get("outputDataConfig", {}).get("s3OutputDataConfig", {}).get("s3Uri")
            or state.output_uri
            or self.output_uri(state.name)
        )
        return state

    def wait(self, states: Sequence[JobState]) -> None:
        """Polls until every job ends; stops the ones still running after ``max_wait``."""
        started = time.monotonic()
        pending = [state for state in states if state.status not in TERMINAL_STATUSES]
        try:
            while True:
                for state in pending:
                    previous = state.status
                    self.refresh(state)
                    if state.status != previous:
                        self.log(f"Bedrock job {state.name}: {state.status}")
                pending = [state for state in pending if state.status not in TERMINAL_STATUSES]
                if not pending:
                    return
                waited = time.monotonic() - started
                if waited >= self.max_wait:
                    self._stop(pending, reason=f"still running after {waited:.0f} s of waiting")
                    return
                self.log(
                    f"waiting for {len(pending)} Bedrock job(s) "
                    f"({waited:.0f} s of at most {self.max_wait:.0f} s)"
                )
                self.sleep(min(self.poll_interval, max(0.0, self.max_wait - waited)))
        except BaseException as interrupt:
            if isinstance(interrupt, Exception):
                raise
            # The run was terminated: stop paying for jobs nobody will read.
            self._stop(pending, reason="the run was interrupted", settle=False)
            raise

    def _stop(self, states: Sequence[JobState], reason: str, settle: bool = True) -> None:
        for state in states:
            self.log(f"stopping Bedrock job {state.name} ({state.arn}): {reason}")
            try:
                self.bedrock.stop_model_invocation_job(jobIdentifier=state.arn)
            except Exception as error:
                self.log(f"could not stop Bedrock job {state.name}: {error}")
            state.message = f"stopped by fdnix: {reason} (BEDROCK_MAX_WAIT_TIME={self.max_wait:g})"
        if not settle:
            return
        deadline = time.monotonic() + min(STOP_SETTLE_SECONDS, max(self.poll_interval, 1.0) * 5)
        pending = list(states)
        while pending and time.monotonic() < deadline:
            for state in pending:
                message = state.message
                self.refresh(state)
                state.message = message
            pending = [state for state in pending if state.status not in TERMINAL_STATUSES]
            if pending:
                self.sleep(min(self.poll_interval, 1.0))
        for state in pending:
            state.status = "Stopping"

    def read_output(self, state: JobState, partial: bool = False) -> ParsedOutput:
        """The job's records joined on recordId, checked against the manifest.

        ``partial``: the job was stopped, so only the records it processed before the stop
        are there (possibly none); they are checked the same way.
        """
        output_uri = state.output_uri or self.output_uri(state.name)
        bucket, prefix = split_s3_uri(output_uri.rstrip("/") + "/" + job_id_of(state.arn) + "/")
        keys = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        output_keys = sorted(key for key in keys if key.endswith(".jsonl.out"))
        if not output_keys and partial:
            return ParsedOutput()
        if not output_keys:
            raise BedrockOutputError(
                f"job {state.name} ({state.arn}) ended {state.status} but s3://{bucket}/{prefix} "
                "holds no .jsonl.out output"
            )
        parsed = ParsedOutput()
        for key in output_keys:
            content = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            parse_output_lines(
                content, f"s3://{bucket}/{key}", state.job.records, self.model.dimensions, parsed
            )
        manifest = None
        manifest_key = prefix + MANIFEST_FILE_NAME
        if manifest_key in keys:
            raw = self.s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
            try:
                manifest = json.loads(raw)
            except ValueError:
                raise BedrockOutputError(
                    f"job {state.name}: s3://{bucket}/{manifest_key} is not valid JSON"
                ) from None
        check_output_complete(parsed, manifest, len(state.job.records), state.name, partial)
        return parsed

    def invoke(self, requests: Sequence[EmbeddingRequest], report: BedrockReport) -> None:
        """On-demand InvokeModel, one call per text (for deltas below the batch minimum).

        A text the model rejects (``ValidationException``) fails alone; any other error
        (access, quota, a missing model) would fail every call, so it ends the pass.
        """
        report.on_demand += len(requests)
        for request in requests:
            try:
                response = self.runtime.invoke_model(
                    modelId=self.model.model_id,
                    body=json.dumps(self.model.body(request.text)),
                    contentType="application/json",
                    accept="application/json",
                )
                payload = json.loads(response["body"].read())
            except Exception as error:
                code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
                if code == "ValidationException":
                    report.failed[request.content_hash] = f"InvokeModel: {error}"
                    continue
                report.job_errors.append(
                    f"InvokeModel of {self.model.model_id} failed for {request.attr_path}: "
                    f"{error}; {len(requests):,} on-demand texts were not embedded"
                )
                return
            embedding = payload.get("embedding") if isinstance(payload, dict) else None
            if not isinstance(embedding, list) or len(embedding) != self.model.dimensions:
                size = len(embedding) if isinstance(embedding, list) else "no"
                report.job_errors.append(
                    f"InvokeModel for {request.attr_path} returned a {size}-dimensional "
                    f"embedding; {self.model.dimensions} were asked for"
                )
                return
            report.vectors[request.content_hash] = np.asarray(embedding, dtype=np.float32)
            report.input_tokens += int(payload.get("inputTextTokenCount") or 0)

    def submit(
        self, requests: Sequence[EmbeddingRequest], *, resubmit_failed: bool = True
    ) -> tuple[BatchPlan, list[JobState]]:
        """Submits (or re-attaches to) the batch jobs for ``requests`` without waiting."""
        prepared, _ = self.prepare(requests)
        plan = self.plan(prepared)
        states = [self.submit_or_attach(job, resubmit_failed=resubmit_failed) for job in plan.jobs]
        return plan, states

    def embed(
        self, requests: Sequence[EmbeddingRequest], *, resubmit_failed: bool = True
    ) -> BedrockReport:
        """Embeds ``requests``: batch jobs (waited for inline), on demand below the minimum,
        failed records retried once. Fatal job problems land in ``job_errors``; the vectors
        of every job that finished are in ``vectors`` either way."""
        report = BedrockReport()
        prepared, report.truncated = self.prepare(requests)
        retry = self._run_round(prepared, report, resubmit_failed)
        if retry:
            self.log(f"retrying {len(retry):,} records that failed in their batch job")
            report.retried = len(retry)
            for request in retry:
                report.failed.pop(request.content_hash, None)
            self._run_round(retry, report, resubmit_failed)
        return report

    def _run_round(
        self, requests: Sequence[EmbeddingRequest], report: BedrockReport, resubmit_failed: bool
    ) -> list[EmbeddingRequest]:
        """One pass of submit, wait and read; returns the records that failed individually."""
        plan = self.plan(requests)
        states = []
        for job in plan.jobs:
            try:
                states.append(self.submit_or_attach(job, resubmit_failed=resubmit_failed))
            except ClientError as error:
                # Keep going: the jobs already submitted still deliver their vectors.
                details = error.response.get("Error", {})
                report.job_errors.append(
                    f"submitting Bedrock job {job.base_name} ({len(job.records):,} records) "
                    f"failed: {details.get('Code', '')}: {details.get('Message', error)}"
                )
        report.jobs.extend(states)
        if plan.on_demand:
            self.log(f"embedding {len(plan.on_demand):,} texts on demand (InvokeModel)")
            self.invoke(plan.on_demand, report)
        self.wait(states)
        failed_records = []
        for state in states:
            finished = state.status in FINISHED_STATUSES
            if not finished:
                report.job_errors.append(
                    f"Bedrock job {state.name} ({state.arn}) ended {state.status}"
                    + (f": {state.message}" if state.message else "")
                )
                if state.status != "Stopped":
                    continue
            try:
                # A stopped job keeps the records it processed before the stop: use them.
                parsed = self.read_output(state, partial=not finished)
            except BedrockOutputError as error:
                report.job_errors.append(str(error))
                if finished:
                    self.reject_output(state, str(error))
                continue
            report.input_tokens += parsed.input_tokens
            for rid, vector in parsed.vectors.items():
                report.vectors[state.job.records[rid].content_hash] = vector
            for rid, message in parsed.errors.items():
                request = state.job.records[rid]
                report.failed[request.content_hash] = message
                if finished:
                    failed_records.append(request)
            self.log(
                f"Bedrock job {state.name} ({state.status}): {len(parsed.vectors):,} vectors, "
                f"{len(parsed.errors):,} failed records of {len(state.job.records):,}"
            )
        return failed_records
