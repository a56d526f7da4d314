"""A local stand-in for Amazon Bedrock batch inference and Titan Text Embeddings v2.

Tests point boto3 at it through ``endpoint_url`` or ``AWS_ENDPOINT_URL_BEDROCK`` /
``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``; it speaks the same restJson1 wire protocol as the real
service (URIs, member names, ISO-8601 timestamps, errors in ``x-amzn-ErrorType`` with a
``message`` body), so real ``bedrock`` and ``bedrock-runtime`` clients parse its answers and
raise the same ``ClientError`` codes. Batch input is read from, and output written to, the
moto S3 server over HTTP, exactly where Bedrock would put it.

What is modelled, and from where (the botocore service models and the Bedrock user guide):

Control plane (``bedrock``):
- ``CreateModelInvocationJob`` (POST /model-invocation-job). Request constraints are checked
  as the service does, with AWS's constraint message ("1 validation error detected: Value 'x'
  at 'roleArn' failed to satisfy constraint: ..."): job name, role ARN, S3 URIs and the
  idempotency token against the model's patterns, ``timeoutDurationInHours`` in 24..168
  (default 168), ``s3InputFormat`` JSONL, ``modelInvocationType`` InvokeModel. The model must
  be Titan Text Embeddings v2 (id or foundation-model ARN) - the only model the product uses.
  The same ``clientRequestToken`` returns the job it already created and creates nothing
  ("Amazon Bedrock ignores the request, but does not return an error"). A second job with a
  name already taken is a ``ConflictException`` (an assumption, see below).
  The input ``s3Uri`` is a single object or a folder: when no object has that key, every
  object under ``<key>/`` is an input file; each must end in ``.jsonl``. Each line must be a
  JSON object with a ``modelInput`` object and, optionally, a string ``recordId`` (Bedrock
  assigns one when it is missing; here an 11-digit running number). The job must hold at
  least ``min_records`` and at most ``max_records`` records, and the output bucket must exist.
  By default those input checks run synchronously and refuse the job with a
  ``ValidationException``; with ``validate_input_on_create=False`` the job is created and fails
  in ``Validating`` with the same message, which is what the status documentation describes.
  The job ARN is ``arn:aws:bedrock:<region>:123456789012:model-invocation-job/<12 [a-z0-9]>``.
- ``GetModelInvocationJob`` (GET /model-invocation-job/{jobIdentifier}) by ARN or bare id;
  ``ResourceNotFoundException`` for an unknown job, ``ValidationException`` for a malformed
  identifier. Includes the record counters the API has (total/processed/success/error).
- ``ListModelInvocationJobs`` (GET /model-invocation-jobs): ``nameContains``,
  ``statusEquals``, ``submitTimeAfter``/``submitTimeBefore`` (exclusive), ``sortBy``
  CreationTime, ``sortOrder`` (default Descending), ``maxResults`` 1..1000 and an opaque
  ``nextToken`` (a token from another filter set is a ``ValidationException``).
- ``StopModelInvocationJob`` (POST /model-invocation-job/{jobIdentifier}/stop): a job not yet
  finished goes ``Stopping`` then ``Stopped``; stopping a stopping job is a no-op; stopping a
  finished job is a ``ConflictException``.

Lifecycle: ``Submitted -> Validating -> Scheduled -> InProgress -> Completed``, each status
lasting ``seconds_per_status`` of wall-clock time (a background thread advances jobs, so a
status never depends on who polls or how often); ``StandInJob.history`` records every status
entered. Outputs are written before the job is seen in its final status, as documented:
for each input file ``<name>.jsonl`` the object ``<output s3Uri>/<job id>/<name>.jsonl.out``
with one line per record, in a deterministic shuffle that is never the input order
(``{"recordId", "modelInput", "modelOutput": {"embedding", "inputTextTokenCount"}}`` or, for a
failed record, ``{"recordId", "modelInput", "error": {"errorCode", "errorMessage"}}``), and
``<output s3Uri>/<job id>/manifest.json.out`` with ``totalRecordCount``,
``processedRecordCount``, ``successRecordCount``, ``errorRecordCount``, ``inputTokenCount``,
``outputTokenCount`` (0: an embedding model emits no tokens).
Records are validated one by one like the model does (Bedrock's job validation does not look
inside ``modelInput``): a text over 50,000 characters, an empty text, a dimension other than
256/512/1024, a wrong type or an unknown key give an error line with errorCode 400 and the
model's "Malformed input request: ..." message. A job with any error record ends
``PartiallyCompleted``.
Steering (each call applies to the next job created, first in first out, one per job):
``fail_next_job`` (InProgress -> Failed with ``message``, no output), ``fail_records_in_next_job``
(exactly round(fraction * records), at least one, get error lines -> PartiallyCompleted),
``expire_next_job`` (Scheduled -> Expired: it never started, no output), ``hang_next_job``
(stays InProgress until stopped), ``corrupt_next_job_output`` (Completed, but the output is
damaged in the named way), and, consumed by the next CreateModelInvocationJob call whatever it
asks, ``refuse_next_submission``. A job stopped while InProgress has processed the first half
of each file's (shuffled) records: their lines and a manifest counting them are written, as
Bedrock keeps the results of records processed before a stop. ``stop_job_externally`` is a
stop by someone else; ``set_slow`` changes the pace of every job from now on.

Runtime (``bedrock-runtime``): ``InvokeModel`` (POST /model/{modelId}/invoke) for Titan
Text Embeddings v2: body ``{"inputText", "dimensions" (default 1024), "normalize" (default
true), "embeddingTypes"}`` -> ``{"embedding", "inputTextTokenCount"}`` (plus
``embeddingsByType`` when ``embeddingTypes`` is given), with the ``X-Amzn-Bedrock-*`` latency
and token-count headers; the same validation messages as batch records; an unknown model is
"The provided model identifier is invalid.". ``throttle_next_invocations`` makes the next
calls answer ``ThrottlingException`` (HTTP 429).

Embeddings are pseudo-embeddings: a normal vector seeded by the SHA-256 of the text, of the
requested dimension, unit length when ``normalize`` is true - the same text always gives the
same vector, in batch and in ``InvokeModel`` (``titan_embedding`` computes it for tests).
Token counts approximate Titan's tokenizer by counting words and punctuation marks.

Knowingly left out: authentication and signatures (any credentials are accepted), tags
APIs, VPC and KMS handling (echoed, not used), per-file and per-job size quotas (1 GB / 5 GB),
the 8,192-token limit, jobs that expire by wall clock (only ``expire_next_job`` expires one),
partial output of ``Failed`` jobs, results appearing while a job is ``InProgress``, expiry of
idempotency tokens, concurrent-job quotas unless asked for with ``refuse_next_submission``.
Assumptions where the documentation is silent: duplicate job names conflict; stopping a
finished job is a ConflictException; ``PartiallyCompleted`` whenever a record failed (the real
service may report ``Completed`` with ``errorRecordCount`` > 0 - check the counts either way).

An admin endpoint lets a test that runs Dagster in a subprocess steer it too:
``POST /_standin/behaviour`` with ``{"action": "<method name>", "kwargs": {...}}`` calls one of
the steering methods; ``GET /_standin/jobs`` lists the jobs as JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import ClientError

ACCOUNT_ID = "123456789012"
TITAN_V2_MODEL_ID = "amazon.titan-embed-text-v2:0"
TITAN_V2_DIMENSIONS = (256, 512, 1024)
TITAN_V2_DEFAULT_DIMENSIONS = 1024
TITAN_V2_MAX_CHARS = 50_000
TITAN_V2_EMBEDDING_TYPES = ("float", "binary")
DEFAULT_TIMEOUT_HOURS = 168

JOB_STATUSES = (
    "Submitted",
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "PartiallyCompleted",
    "Expired",
    "Validating",
    "Scheduled",
)
TERMINAL_STATUSES = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})
CORRUPTION_KINDS = (
    "missing_output",
    "corrupt_line",
    "duplicate_ids",
    "unknown_ids",
    "wrong_dimension",
    "missing_manifest",
)

# The patterns are the botocore service model's, so the stand-in refuses what Bedrock refuses.
JOB_NAME_PATTERN = r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}"
ROLE_ARN_PATTERN = r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+"
S3_URI_PATTERN = (
    r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?"
)
IDEMPOTENCY_TOKEN_PATTERN = r"[a-zA-Z0-9]([-a-zA-Z0-9]{0,254}[a-zA-Z0-9])?"
JOB_IDENTIFIER_PATTERN = (
    r"((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?[a-z0-9]{12})"
)

ERROR_HTTP_STATUS = {
    "ValidationException": 400,
    "ConflictException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}
DEFAULT_REFUSAL_MESSAGES = {
    "ServiceQuotaExceededException": (
        "You have reached the maximum number of batch inference jobs in progress for this "
        "model. Wait for a job to finish or request a quota increase."
    ),
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "AccessDeniedException": "You don't have access to the model with the specified model ID.",
    "InternalServerException": "The server encountered an internal error.",
}
TICK_SECONDS = 0.01
_TOKEN = re.compile(r"\w+|[^\w\s]")


class BedrockError(Exception):
    """An error answered the way Bedrock answers it: an error type and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return ERROR_HTTP_STATUS.get(self.code, 400)


class ModelInputError(ValueError):
    """A model input Titan v2 refuses; the message is the model's own wording."""


def _constraint_error(value: object, member: str, constraint: str) -> BedrockError:
    return BedrockError(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
        f"constraint: Member must {constraint}",
    )


def _check_pattern(value: object, member: str, pattern: str, max_length: int | None = None) -> str:
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise _constraint_error(value, member, f"satisfy regular expression pattern: {pattern}")
    if max_length is not None and len(value) > max_length:
        raise _constraint_error(value, member, f"have length less than or equal to {max_length}")
    return value


def titan_token_count(text: str) -> int:
    """Approximates Titan's token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def titan_embedding(text: str, dimensions: int = 1024, normalize: bool = True) -> list[float]:
    """The stand-in's vector for a text, seeded by its SHA-256: equal texts, equal vectors."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8])
    vector = np.random.default_rng(seed).standard_normal(dimensions)
    if normalize:
        vector /= np.linalg.norm(vector)
    else:
        # Unnormalized Titan vectors are not unit length; any fixed scale shows that.
        vector *= 0.05
    return [round(value, 8) for value in vector.tolist()]


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "BigDecimal"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "JSONArray"
    if isinstance(value, dict):
        return "JSONObject"
    return "Null"


def _malformed(violations: list[str]) -> ModelInputError:
    many = f"{len(violations)} schema violations found"
    detail = violations[0] if len(violations) == 1 else many
    return ModelInputError(
        f"Malformed input request: {detail}, please reformat your input and try again."
    )


def titan_invoke(model_input: object) -> dict[str, Any]:
    """Titan Text Embeddings v2's answer to one request body, or ModelInputError."""
    if not isinstance(model_input, dict):
        raise _malformed([f"#: expected type: JSONObject, found: {_json_type(model_input)}"])
    violations: list[str] = []
    for key in model_input:
        if key not in ("inputText", "dimensions", "normalize", "embeddingTypes"):
            violations.append(f"extraneous key [{key}] is not permitted")
    text = model_input.get("inputText")
    if "inputText" not in model_input:
        violations.append("#: required key [inputText] not found")
    elif not isinstance(text, str):
        violations.append(f"#/inputText: expected type: String, found: {_json_type(text)}")
    elif len(text) > TITAN_V2_MAX_CHARS:
        violations.append(
            f"#/inputText: expected maxLength: {TITAN_V2_MAX_CHARS}, actual: {len(text)}"
        )
    elif not text:
        violations.append("#/inputText: expected minLength: 1, actual: 0")
    dimensions = model_input.get("dimensions", TITAN_V2_DEFAULT_DIMENSIONS)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        violations.append(f"#/dimensions: expected type: Integer, found: {_json_type(dimensions)}")
    elif dimensions not in TITAN_V2_DIMENSIONS:
        violations.append(f"#/dimensions: {dimensions} is not a valid enum value")
    normalize = model_input.get("normalize", True)
    if not isinstance(normalize, bool):
        violations.append(f"#/normalize: expected type: Boolean, found: {_json_type(normalize)}")
    embedding_types = model_input.get("embeddingTypes")
    if embedding_types is not None:
        if not isinstance(embedding_types, list):
            violations.append(
                f"#/embeddingTypes: expected type: JSONArray, found: {_json_type(embedding_types)}"
            )
        else:
            for index, kind in enumerate(embedding_types):
                if kind not in TITAN_V2_EMBEDDING_TYPES:
                    violations.append(f"#/embeddingTypes/{index}: {kind} is not a valid enum value")
    if violations:
        raise _malformed(violations)
    assert isinstance(text, str)
    embedding = titan_embedding(text, dimensions, normalize)
    answer: dict[str, Any] = {
        "embedding": embedding,
        "inputTextTokenCount": titan_token_count(text),
    }
    if embedding_types:
        by_type: dict[str, list[float] | list[int]] = {}
        if "float" in embedding_types:
            by_type["float"] = embedding
        if "binary" in embedding_types:
            by_type["binary"] = [1 if value > 0 else 0 for value in embedding]
        answer["embeddingsByType"] = by_type
    return answer


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")


def _join_s3(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Behaviour:
    """What the next job does instead of (or besides) completing normally."""

    kind: str  # "fail" | "fail_records" | "expire" | "hang" | "corrupt"
    message: str = ""
    fraction: float = 0.0
    corruption: str = ""
    error_code: int = 400
    error_message: str = ""


@dataclass
class InputFile:
    """One JSONL input object of a job, parsed."""

    bucket: str
    key: str
    records: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class StandInJob:
    """A batch inference job as the stand-in tracks it (read it in tests; it changes live)."""

    arn: str
    job_id: str
    name: str
    model_id: str
    role_arn: str
    client_request_token: str | None
    input_uri: str
    output_uri: str
    record_count: int
    created_order: int
    submit_time: datetime
    timeout_hours: int
    request: dict[str, Any] = field(repr=False)
    behaviour: Behaviour | None = None
    status: str = "Submitted"
    message: str | None = None
    last_modified_time: datetime | None = None
    end_time: datetime | None = None
    expiration_time: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    processed_record_count: int = 0
    success_record_count: int = 0
    error_record_count: int = 0
    input_token_count: int = 0
    output_keys: list[str] = field(default_factory=list)
    validation_error: str | None = None
    files: list[InputFile] = field(default_factory=list, repr=False)
    status_since: float = 0.0
    stopped_while_in_progress: bool = False

    @property
    def output_job_uri(self) -> str:
        """Where Bedrock writes this job's results: ``<output s3Uri>/<job id>``."""
        return _join_s3(self.output_uri, self.job_id)

    def describe(self) -> dict[str, Any]:
        """The job as GetModelInvocationJob and ListModelInvocationJobs describe it."""
        input_config = dict(self.request["inputDataConfig"]["s3InputDataConfig"])
        output_config = dict(self.request["outputDataConfig"]["s3OutputDataConfig"])
        described: dict[str, Any] = {
            "jobArn": self.arn,
            "jobName": self.name,
            "modelId": self.model_id,
            "clientRequestToken": self.client_request_token,
            "roleArn": self.role_arn,
            "status": self.status,
            "message": self.message,
            "submitTime": _timestamp(self.submit_time),
            "lastModifiedTime": _timestamp(self.last_modified_time),
            "endTime": _timestamp(self.end_time),
            "inputDataConfig": {"s3InputDataConfig": input_config},
            "outputDataConfig": {"s3OutputDataConfig": output_config},
            "vpcConfig": self.request.get("vpcConfig"),
            "timeoutDurationInHours": self.timeout_hours,
            "jobExpirationTime": _timestamp(self.expiration_time),
            "modelInvocationType": self.request.get("modelInvocationType"),
            "totalRecordCount": self.record_count,
            "processedRecordCount": self.processed_record_count,
            "successRecordCount": self.success_record_count,
            "errorRecordCount": self.error_record_count,
        }
        return {key: value for key, value in described.items() if value is not None}


class BedrockStandIn:
    """Bedrock batch inference and Titan v2 InvokeModel over HTTP on 127.0.0.1, for tests."""

    def __init__(
        self,
        s3_endpoint_url: str,
        *,
        region: str = "us-east-1",
        min_records: int = 100,
        max_records: int = 50_000,
        seconds_per_status: float = 0.05,
        validate_input_on_create: bool = True,
    ) -> None:
        self.s3_endpoint_url = s3_endpoint_url
        self.region = region
        self.min_records = min_records
        self.max_records = max_records
        self.validate_input_on_create = validate_input_on_create
        self.endpoint_url = ""
        self.jobs: dict[str, StandInJob] = {}
        self.invoke_model_calls = 0
        self._seconds_per_status = seconds_per_status
        self._behaviours: deque[Behaviour] = deque()
        self._refusals: deque[BedrockError] = deque()
        self._throttled_invocations = 0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        # Explicit dummy credentials: moto accepts any, and the stand-in must not depend on
        # (or reveal) whatever the environment holds.
        self._s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint_url,
            region_name=region,
            aws_access_key_id="standin",
            aws_secret_access_key="standin-secret",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Starts serving; returns the endpoint URL for both bedrock and bedrock-runtime."""
        handler = type("BoundHandler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self._stopping.clear()
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="bedrock-standin-http",
                daemon=True,
            ),
            threading.Thread(target=self._tick_forever, name="bedrock-standin-jobs", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.endpoint_url

    def stop(self) -> None:
        """Stops serving and advancing jobs."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    @property
    def created_job_count(self) -> int:
        """How many batch jobs were created (idempotent replays and refusals not counted)."""
        return len(self.jobs)

    # -- steering --------------------------------------------------------------------------

    def fail_next_job(self, message: str = "Internal failure") -> None:
        """The next job fails once InProgress, with this message and no output."""
        self._enqueue(Behaviour(kind="fail", message=message))

    def fail_records_in_next_job(
        self,
        fraction: float = 0.1,
        *,
        error_code: int = 400,
        error_message: str = "The model could not process this record. Try it again.",
    ) -> None:
        """In the next job, round(fraction * records) records (at least one) get error lines."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self._enqueue(
            Behaviour(
                kind="fail_records",
                fraction=fraction,
                error_code=error_code,
                error_message=error_message,
            )
        )

    def expire_next_job(self) -> None:
        """The next job is scheduled but never starts: it ends Expired with no output."""
        self._enqueue(Behaviour(kind="expire"))

    def hang_next_job(self) -> None:
        """The next job stays InProgress until it is stopped."""
        self._enqueue(Behaviour(kind="hang"))

    def corrupt_next_job_output(self, kind: str) -> None:
        """The next job ends Completed, but its output is damaged in the named way."""
        if kind not in CORRUPTION_KINDS:
            raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTION_KINDS}")
        self._enqueue(Behaviour(kind="corrupt", corruption=kind))

    def refuse_next_submission(
        self,
        code: str = "ServiceQuotaExceededException",
        message: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        """The next ``times`` CreateModelInvocationJob calls answer this error.

        boto3 retries ThrottlingException and InternalServerException by itself, so refusing
        once with those codes is invisible to a caller with retries left."""
        if code not in ERROR_HTTP_STATUS:
            raise ValueError(
                f"unknown error code {code!r}; choose one of {list(ERROR_HTTP_STATUS)}"
            )
        text = message or DEFAULT_REFUSAL_MESSAGES.get(code, f"Request refused ({code}).")
        with self._lock:
            self._refusals.extend(BedrockError(code, text) for _ in range(times))

    def throttle_next_invocations(self, count: int = 1) -> None:
        """The next ``count`` InvokeModel calls answer ThrottlingException (HTTP 429)."""
        with self._lock:
            self._throttled_invocations += count

    def stop_job_externally(self, job_arn: str) -> None:
        """Someone else (the console, another process) stops the job."""
        self._stop_job(job_arn)

    def set_slow(self, seconds_per_status: float) -> None:
        """From now on every job spends this long in each status."""
        with self._lock:
            self._seconds_per_status = seconds_per_status

    def _enqueue(self, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviours.append(behaviour)

    # -- control plane ---------------------------------------------------------------------

    def create_job(self, request: dict[str, Any]) -> dict[str, Any]:
        """CreateModelInvocationJob."""
        with self._lock:
            if self._refusals:
                raise self._refusals.popleft()
        for member in ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig"):
            if member not in request:
                raise _constraint_error("null", member, "not be null")
        name = _check_pattern(request["jobName"], "jobName", JOB_NAME_PATTERN, 63)
        role_arn = _check_pattern(request["roleArn"], "roleArn", ROLE_ARN_PATTERN, 2048)
        token = request.get("clientRequestToken")
        if token is not None:
            _check_pattern(token, "clientRequestToken", IDEMPOTENCY_TOKEN_PATTERN, 256)
            with self._lock:
                for job in self.jobs.values():
                    if job.client_request_token == token:
                        return {"jobArn": job.arn}
        model_id = request["modelId"]
        if not self._is_titan_v2(model_id):
            raise BedrockError("ValidationException", "The provided model identifier is invalid.")
        invocation_type = request.get("modelInvocationType")
        if invocation_type not in (None, "InvokeModel"):
            raise BedrockError(
                "ValidationException",
                f"Model {model_id} does not support modelInvocationType {invocation_type}.",
            )
        input_config = (request["inputDataConfig"] or {}).get("s3InputDataConfig")
        output_config = (request["outputDataConfig"] or {}).get("s3OutputDataConfig")
        if not isinstance(input_config, dict):
            raise _constraint_error("null", "inputDataConfig.s3InputDataConfig", "not be null")
        if not isinstance(output_config, dict):
            raise _constraint_error("null", "outputDataConfig.s3OutputDataConfig", "not be null")
        input_uri = _check_pattern(
            input_config.get("s3Uri"), "inputDataConfig.s3InputDataConfig.s3Uri", S3_URI_PATTERN
        )
        output_uri = _check_pattern(
            output_config.get("s3Uri"), "outputDataConfig.s3OutputDataConfig.s3Uri", S3_URI_PATTERN
        )
        input_format = input_config.get("s3InputFormat")
        if input_format not in (None, "JSONL"):
            raise _constraint_error(
                input_format,
                "inputDataConfig.s3InputDataConfig.s3InputFormat",
                "satisfy enum value set: [JSONL]",
            )
        timeout_hours = request.get("timeoutDurationInHours", DEFAULT_TIMEOUT_HOURS)
        if not isinstance(timeout_hours, int) or timeout_hours < 24:
            raise _constraint_error(
                timeout_hours, "timeoutDurationInHours", "have value greater than or equal to 24"
            )
        if timeout_hours > 168:
            raise _constraint_error(
                timeout_hours, "timeoutDurationInHours", "have value less than or equal to 168"
            )
        tags = {tag["key"]: tag["value"] for tag in request.get("tags") or []}

        files: list[InputFile] = []
        validation_error: str | None = None
        try:
            files = self._load_input(input_uri)
            self._check_record_counts(files, input_uri, model_id)
            self._check_output_bucket(output_uri)
        except BedrockError as error:
            if self.validate_input_on_create:
                raise
            validation_error = error.message

        with self._lock:
            if token is not None:
                for job in self.jobs.values():
                    if job.client_request_token == token:
                        return {"jobArn": job.arn}
            if any(job.name == name for job in self.jobs.values()):
                raise BedrockError(
                    "ConflictException",
                    f"A batch inference job with the name {name} already exists in this "
                    f"account and region.",
                )
            job_id = secrets.token_hex(6)
            # Millisecond precision, as the API reports it, so the submitTime a caller reads
            # back filters exactly in submitTimeAfter/submitTimeBefore.
            now = _now()
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            # Strictly increasing, so a time filter between two jobs always separates them.
            latest = max((job.submit_time for job in self.jobs.values()), default=None)
            if latest is not None and now <= latest:
                now = latest + timedelta(milliseconds=1)
            job = StandInJob(
                arn=f"arn:aws:bedrock:{self.region}:{ACCOUNT_ID}:model-invocation-job/{job_id}",
                job_id=job_id,
                name=name,
                model_id=model_id,
                role_arn=role_arn,
                client_request_token=token,
                input_uri=input_uri,
                output_uri=output_uri,
                record_count=sum(len(file.records) for file in files),
                created_order=len(self.jobs),
                submit_time=now,
                timeout_hours=timeout_hours,
                request=request,
                behaviour=self._behaviours.popleft() if self._behaviours else None,
                last_modified_time=now,
                expiration_time=now + timedelta(hours=timeout_hours),
                tags=tags,
                history=["Submitted"],
                validation_error=validation_error,
                files=files,
                status_since=time.monotonic(),
            )
            self.jobs[job.arn] = job
        return {"jobArn": job.arn}

    def get_job(self, identifier: str) -> dict[str, Any]:
        """GetModelInvocationJob."""
        with self._lock:
            return self._find(identifier).describe()

    def list_jobs(self, query: dict[str, str]) -> dict[str, Any]:
        """ListModelInvocationJobs."""
        status = query.get("statusEquals")
        if status is not None and status not in JOB_STATUSES:
            raise _constraint_error(
                status, "statusEquals", f"satisfy enum value set: [{', '.join(JOB_STATUSES)}]"
            )
        sort_by = query.get("sortBy", "CreationTime")
        if sort_by != "CreationTime":
            raise _constraint_error(sort_by, "sortBy", "satisfy enum value set: [CreationTime]")
        sort_order = query.get("sortOrder", "Descending")
        if sort_order not in ("Ascending", "Descending"):
            raise _constraint_error(
                sort_order, "sortOrder", "satisfy enum value set: [Ascending, Descending]"
            )
        max_results = self._int_query(query, "maxResults", 1000)
        if max_results < 1:
            raise _constraint_error(
                max_results, "maxResults", "have value greater than or equal to 1"
            )
        if max_results > 1000:
            raise _constraint_error(
                max_results, "maxResults", "have value less than or equal to 1000"
            )
        after = self._time_query(query, "submitTimeAfter")
        before = self._time_query(query, "submitTimeBefore")
        name_contains = query.get("nameContains")
        filters = json.dumps(
            [
                status,
                sort_order,
                name_contains,
                query.get("submitTimeAfter"),
                query.get("submitTimeBefore"),
            ]
        )
        fingerprint = hashlib.sha256(filters.encode()).hexdigest()[:16]
        offset = 0
        if "nextToken" in query:
            offset = self._decode_token(query["nextToken"], fingerprint)

        with self._lock:
            jobs = sorted(self.jobs.values(), key=lambda job: job.created_order)
            if sort_order == "Descending":
                jobs.reverse()
            selected = [
                job
                for job in jobs
                if (status is None or job.status == status)
                and (name_contains is None or name_contains in job.name)
                and (after is None or job.submit_time > after)
                and (before is None or job.submit_time < before)
            ]
            page = [job.describe() for job in selected[offset : offset + max_results]]
        answer: dict[str, Any] = {"invocationJobSummaries": page}
        if offset + max_results < len(selected):
            answer["nextToken"] = self._encode_token(offset + max_results, fingerprint)
        return answer

    def stop_job_request(self, identifier: str) -> dict[str, Any]:
        """StopModelInvocationJob."""
        self._stop_job(identifier)
        return {}

    def _stop_job(self, identifier: str) -> None:
        with self._lock:
            job = self._find(identifier)
            if job.status == "Stopping":
                return
            if job.status in TERMINAL_STATUSES:
                raise BedrockError(
                    "ConflictException",
                    f"The batch inference job {job.arn} is {job.status} and cannot be stopped.",
                )
            job.stopped_while_in_progress = job.status == "InProgress"
            self._enter(job, "Stopping")
            job.status_since = time.monotonic()

    def _find(self, identifier: str) -> StandInJob:
        _check_pattern(identifier, "jobIdentifier", JOB_IDENTIFIER_PATTERN, 1011)
        if identifier in self.jobs:
            return self.jobs[identifier]
        if "/" not in identifier:
            for job in self.jobs.values():
                if job.job_id == identifier:
                    return job
        raise BedrockError(
            "ResourceNotFoundException",
            f"The specified batch inference job {identifier} could not be found.",
        )

    def _is_titan_v2(self, model_id: object) -> bool:
        if not isinstance(model_id, str):
            return False
        if model_id == TITAN_V2_MODEL_ID:
            return True
        return bool(
            re.fullmatch(
                rf"arn:aws:bedrock:{re.escape(self.region)}::foundation-model/"
                rf"{re.escape(TITAN_V2_MODEL_ID)}",
                model_id,
            )
        )

    @staticmethod
    def _int_query(query: dict[str, str], name: str, default: int) -> int:
        if name not in query:
            return default
        try:
            return int(query[name])
        except ValueError:
            raise _constraint_error(query[name], name, "be an integer") from None

    @staticmethod
    def _time_query(query: dict[str, str], name: str) -> datetime | None:
        if name not in query:
            return None
        try:
            moment = datetime.fromisoformat(query[name])
        except ValueError:
            raise _constraint_error(query[name], name, "be an ISO-8601 timestamp") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    @staticmethod
    def _encode_token(offset: int, fingerprint: str) -> str:
        return base64.urlsafe_b64encode(f"{fingerprint}:{offset}".encode()).decode()

    @staticmethod
    def _decode_token(token: str, fingerprint: str) -> int:
        try:
            token_fingerprint, offset = base64.urlsafe_b64decode(token).decode().split(":")
            if token_fingerprint == fingerprint:
                return int(offset)
        except (ValueError, UnicodeDecodeError):
            pass
        raise BedrockError("ValidationException", "The provided pagination token is invalid.")

    # -- input validation ------------------------------------------------------------------

    def _load_input(self, uri: str) -> list[InputFile]:
        bucket, key = _parse_s3_uri(uri)
        keys: list[str]
        if key and not key.endswith("/") and self._object_exists(bucket, key, uri):
            keys = [key]
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            keys = []
            try:
                for page in self._s3.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix
                ):
                    keys.extend(
                        item["Key"]
                        for item in page.get("Contents", [])
                        if not item["Key"].endswith("/")
                    )
            except ClientError as error:
                raise self._s3_access_error(uri, error) from None
            if not keys:
                raise BedrockError(
                    "ValidationException",
                    f"No input files found at {uri}: it is neither an object nor a folder "
                    f"holding .jsonl files.",
                )
        for each in keys:
            if not each.endswith(".jsonl"):
                raise BedrockError(
                    "ValidationException",
                    f"Input file s3://{bucket}/{each} is not a .jsonl file; batch inference "
                    f"input files must be JSONL with the .jsonl extension.",
                )
        return [self._read_input_file(bucket, each) for each in sorted(keys)]

    def _object_exists(self, bucket: str, key: str, uri: str) -> bool:
        try:
            self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._s3_access_error(uri, error) from None
        return True

    @staticmethod
    def _s3_access_error(uri: str, error: ClientError) -> BedrockError:
        return BedrockError(
            "ValidationException",
            f"Unable to access the S3 location {uri} with the provided role: "
            f"{error.response['Error'].get('Code')}.",
        )

    def _read_input_file(self, bucket: str, key: str) -> InputFile:
        where = f"s3://{bucket}/{key}"
        try:
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            raise self._s3_access_error(where, error) from None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BedrockError(
                "ValidationException", f"Input file {where} is not UTF-8 encoded JSONL."
            ) from None
        records: list[dict[str, Any]] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BedrockError(
                    "ValidationException",
                    f"Input file {where} line {line_number} is not valid JSON: {error.msg}.",
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("modelInput"), dict):
                raise BedrockError(
                    "ValidationException",
                    f"Input file {where} line {line_number} is not a record of the form "
                    '{"recordId": "...", "modelInput": {...}}.',
                )
            if "recordId" in record and not isinstance(record["recordId"], str):
                raise BedrockError(
                    "ValidationException",
                    f"Input file {where} line {line_number}: recordId must be a string.",
                )
            records.append(record)
        return InputFile(bucket=bucket, key=key, records=records)

    def _check_record_counts(self, files: list[InputFile], uri: str, model_id: str) -> None:
        total = 0
        for file in files:
            if len(file.records) > self.max_records:
                raise BedrockError(
                    "ValidationException",
                    f"Input file {file.uri} has {len(file.records)} records, more than "
                    f"the quota of {self.max_records} records per input file per batch "
                    f"inference job.",
                )
            total += len(file.records)
        if total < self.min_records:
            raise BedrockError(
                "ValidationException",
                f"The input at {uri} has {total} records, fewer than the minimum of "
                f"{self.min_records} records per batch inference job for model {model_id}.",
            )
        if total > self.max_records:
            raise BedrockError(
                "ValidationException",
                f"The input at {uri} has {total} records, more than the quota of "
                f"{self.max_records} records per batch inference job for model {model_id}.",
            )
        # Records without an id get one, as Bedrock adds recordId to their output lines.
        running = 0
        for file in files:
            for record in file.records:
                running += 1
                record.setdefault("recordId", f"{running:011d}")

    def _check_output_bucket(self, uri: str) -> None:
        bucket, _ = _parse_s3_uri(uri)
        try:
            self._s3.head_bucket(Bucket=bucket)
        except ClientError as error:
            raise BedrockError(
                "ValidationException",
                f"Unable to access the output S3 location {uri}: bucket {bucket} "
                f"({error.response['Error'].get('Code')}).",
            ) from None

    # -- job progress ----------------------------------------------------------------------

    def _tick_forever(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            with self._lock:
                for job in list(self.jobs.values()):
                    self._advance(job)

    def _advance(self, job: StandInJob) -> None:
        while job.status not in TERMINAL_STATUSES:
            if time.monotonic() - job.status_since < self._seconds_per_status:
                return
            following = self._next_status(job)
            if following is None:
                return
            job.status_since += self._seconds_per_status
            self._enter(job, following)

    def _next_status(self, job: StandInJob) -> str | None:
        kind = job.behaviour.kind if job.behaviour else None
        if job.status == "Submitted":
            return "Validating"
        if job.status == "Validating":
            if job.validation_error:
                job.message = job.validation_error
                return "Failed"
            return "Scheduled"
        if job.status == "Scheduled":
            if kind == "expire":
                job.message = (
                    f"The job was scheduled but did not start before its timeout of "
                    f"{job.timeout_hours} hours."
                )
                job.expiration_time = _now()
                return "Expired"
            return "InProgress"
        if job.status == "InProgress":
            if kind == "hang":
                return None
            if kind == "fail":
                assert job.behaviour is not None
                job.message = job.behaviour.message
                return "Failed"
            return self._finish(job, processed_fraction=1.0)
        if job.status == "Stopping":
            if job.stopped_while_in_progress:
                self._finish(job, processed_fraction=0.5)
            return "Stopped"
        raise AssertionError(f"no status follows {job.status}")

    def _enter(self, job: StandInJob, status: str) -> None:
        now = _now()
        job.status = status
        job.history.append(status)
        job.last_modified_time = now
        if status in TERMINAL_STATUSES:
            job.end_time = now

    def _finish(self, job: StandInJob, processed_fraction: float) -> str:
        """Runs the model over the job's records and writes outputs; returns the final status."""
        behaviour = job.behaviour
        all_records = [
            (file_index, record_index)
            for file_index, file in enumerate(job.files)
            for record_index in range(len(file.records))
        ]
        injected: set[tuple[int, int]] = set()
        if behaviour is not None and behaviour.kind == "fail_records":
            count = max(1, round(behaviour.fraction * len(all_records)))
            injected = set(random.Random(f"{job.job_id}:fail").sample(all_records, count))
        corruption = behaviour.corruption if behaviour and behaviour.kind == "corrupt" else ""

        counts = {"processed": 0, "success": 0, "error": 0, "tokens": 0}
        outputs: dict[str, str] = {}
        for file_index, file in enumerate(job.files):
            order = self._output_order(job, file)
            order = order[: int(len(order) * processed_fraction)]
            lines: list[dict[str, Any]] = []
            for record_index in order:
                record = file.records[record_index]
                line: dict[str, Any] = {
                    "recordId": record["recordId"],
                    "modelInput": record["modelInput"],
                }
                counts["processed"] += 1
                try:
                    answer = titan_invoke(record["modelInput"])
                except ModelInputError as error:
                    line["error"] = {"errorCode": 400, "errorMessage": str(error)}
                else:
                    if (file_index, record_index) in injected:
                        assert behaviour is not None
                        line["error"] = {
                            "errorCode": behaviour.error_code,
                            "errorMessage": behaviour.error_message,
                        }
                    else:
                        line["modelOutput"] = answer
                        counts["tokens"] += answer["inputTextTokenCount"]
                counts["error" if "error" in line else "success"] += 1
                lines.append(line)
            texts = [json.dumps(line, separators=(",", ":")) for line in lines]
            if file_index == 0 and corruption:
                texts = self._corrupt(texts, lines, corruption)
            outputs[_join_s3(job.output_job_uri, f"{file.name}.out")] = "".join(
                f"{text}\n" for text in texts
            )
        manifest = {
            "totalRecordCount": job.record_count,
            "processedRecordCount": counts["processed"],
            "successRecordCount": counts["success"],
            "errorRecordCount": counts["error"],
            "inputTokenCount": counts["tokens"],
            "outputTokenCount": 0,
        }
        if corruption != "missing_manifest":
            outputs[_join_s3(job.output_job_uri, "manifest.json.out")] = json.dumps(manifest)
        if corruption == "missing_output":
            outputs = {
                uri: body for uri, body in outputs.items() if uri.endswith("manifest.json.out")
            }
        try:
            for uri, body in outputs.items():
                bucket, key = _parse_s3_uri(uri)
                self._s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
                job.output_keys.append(key)
        except ClientError as error:
            job.message = (
                f"Unable to write output to {job.output_job_uri}: "
                f"{error.response['Error'].get('Code')}."
            )
            return "Failed"
        job.processed_record_count = counts["processed"]
        job.success_record_count = counts["success"]
        job.error_record_count = counts["error"]
        job.input_token_count = counts["tokens"]
        return "PartiallyCompleted" if counts["error"] else "Completed"

    @staticmethod
    def _output_order(job: StandInJob, file: InputFile) -> list[int]:
        order = list(range(len(file.records)))
        random.Random(f"{job.job_id}:{file.key}").shuffle(order)
        if len(order) > 1 and order == sorted(order):
            order = order[1:] + order[:1]  # Bedrock never promises input order; never give it
        return order

    @staticmethod
    def _corrupt(texts: list[str], lines: list[dict[str, Any]], kind: str) -> list[str]:
        texts = list(texts)
        successes = [index for index, line in enumerate(lines) if "modelOutput" in line]
        if not texts:
            return texts
        victim = successes[len(successes) // 2] if successes else len(texts) // 2
        if kind == "corrupt_line":
            texts[victim] = texts[victim][: len(texts[victim]) // 2]
        elif kind == "duplicate_ids":
            # A second, conflicting answer for a record that already has one.
            duplicate = json.loads(texts[victim])
            if "modelOutput" in duplicate:
                dimensions = len(duplicate["modelOutput"]["embedding"])
                duplicate["modelOutput"]["embedding"] = titan_embedding("duplicate", dimensions)
            texts.append(json.dumps(duplicate, separators=(",", ":")))
        elif kind == "unknown_ids":
            replaced = json.loads(texts[victim])
            replaced["recordId"] = f"UNKNOWN{uuid.uuid4().hex[:8]}"
            texts[victim] = json.dumps(replaced, separators=(",", ":"))
        elif kind == "wrong_dimension":
            shortened = json.loads(texts[victim])
            embedding = shortened["modelOutput"]["embedding"]
            shortened["modelOutput"]["embedding"] = embedding[: len(embedding) // 2]
            texts[victim] = json.dumps(shortened, separators=(",", ":"))
        return texts

    # -- runtime ---------------------------------------------------------------------------

    def invoke_model(self, model_id: str, body: bytes) -> tuple[dict[str, Any], int]:
        """InvokeModel: returns Titan's answer and how long it "took" in milliseconds."""
        started = time.perf_counter()
        with self._lock:
            self.invoke_model_calls += 1
            if self._throttled_invocations > 0:
                self._throttled_invocations -= 1
                raise BedrockError(
                    "ThrottlingException", "Too many requests, please wait before trying again."
                )
        if not self._is_titan_v2(model_id):
            raise BedrockError("ValidationException", "The provided model identifier is invalid.")
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BedrockError(
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
            ) from None
        try:
            answer = titan_invoke(request)
        except ModelInputError as error:
            raise BedrockError("ValidationException", str(error)) from None
        return answer, max(1, round((time.perf_counter() - started) * 1000))

    # -- admin -----------------------------------------------------------------------------

    ADMIN_ACTIONS = (
        "fail_next_job",
        "fail_records_in_next_job",
        "expire_next_job",
        "hang_next_job",
        "corrupt_next_job_output",
        "refuse_next_submission",
        "throttle_next_invocations",
        "stop_job_externally",
        "set_slow",
    )

    def admin_behaviour(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST /_standin/behaviour: {"action": <steering method>, "kwargs": {...}}."""
        action = request.get("action")
        if action not in self.ADMIN_ACTIONS:
            raise BedrockError(
                "ValidationException",
                f"unknown action {action!r}; choose one of {list(self.ADMIN_ACTIONS)}",
            )
        try:
            getattr(self, action)(**(request.get("kwargs") or {}))
        except (TypeError, ValueError) as error:
            raise BedrockError("ValidationException", f"{action}: {error}") from None
        return {"ok": True}

    def admin_jobs(self) -> dict[str, Any]:
        """GET /_standin/jobs."""
        with self._lock:
            return {
                "jobs": [
                    {**job.describe(), "history": list(job.history)}
                    for job in sorted(self.jobs.values(), key=lambda job: job.created_order)
                ],
                "invokeModelCalls": self.invoke_model_calls,
            }


class _Handler(BaseHTTPRequestHandler):
    """Routes restJson1 requests to the stand-in; keeps connections alive like AWS does."""

    protocol_version = "HTTP/1.1"
    standin: BedrockStandIn

    def log_message(self, format_: str, *args: Any) -> None:
        """Quiet: tests read results, not access logs."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        segments = [unquote(segment) for segment in url.path.strip("/").split("/")]
        query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        standin = self.standin
        try:
            route = (method, *segments)
            match route:
                case ("POST", "model-invocation-job"):
                    self._reply_json(standin.create_job(self._json(body)))
                case ("GET", "model-invocation-job", identifier):
                    self._reply_json(standin.get_job(identifier))
                case ("POST", "model-invocation-job", identifier, "stop"):
                    self._reply_json(standin.stop_job_request(identifier))
                case ("GET", "model-invocation-jobs"):
                    self._reply_json(standin.list_jobs(query))
                case ("POST", "model", model_id, "invoke"):
                    answer, latency_ms = standin.invoke_model(model_id, body)
                    self._reply_json(
                        answer,
                        headers={
                            "X-Amzn-Bedrock-Invocation-Latency": str(latency_ms),
                            "X-Amzn-Bedrock-Input-Token-Count": str(answer["inputTextTokenCount"]),
                        },
                    )
                case ("POST", "_standin", "behaviour"):
                    self._reply_json(standin.admin_behaviour(self._json(body)))
                case ("GET", "_standin", "jobs"):
                    self._reply_json(standin.admin_jobs())
                case _:
                    self._reply_error(
                        BedrockError(
                            "UnknownOperationException", f"No route for {method} {url.path}"
                        ),
                        status=404,
                    )
        except BedrockError as error:
            self._reply_error(error)
        except Exception as error:  # a stand-in bug must reach the test, not hang the client
            self._reply_error(BedrockError("InternalServerException", f"stand-in error: {error!r}"))

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            parsed = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BedrockError(
                "ValidationException", "The request body is not valid JSON."
            ) from None
        if not isinstance(parsed, dict):
            raise BedrockError("ValidationException", "The request body is not a JSON object.")
        return parsed

    def _reply_json(
        self, payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _reply_error(self, error: BedrockError, status: int | None = None) -> None:
        data = json.dumps({"message": error.message}).encode()
        self.send_response(status or error.http_status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header(
            "x-amzn-ErrorType", f"{error.code}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        )
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str] | None = None) -> None:
    """Serves the stand-in until interrupted, for a manual run or another process's tests.

    ``python -m fdnix_assets_tests.bedrock_standin --s3-endpoint-url http://127.0.0.1:PORT``
    prints the endpoint URL on its first line of output."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--s3-endpoint-url", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--min-records", type=int, default=100)
    parser.add_argument("--max-records", type=int, default=50_000)
    parser.add_argument("--seconds-per-status", type=float, default=0.05)
    options = parser.parse_args(argv)
    standin = BedrockStandIn(
        options.s3_endpoint_url,
        region=options.region,
        min_records=options.min_records,
        max_records=options.max_records,
        seconds_per_status=options.seconds_per_status,
    )
    print(standin.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
