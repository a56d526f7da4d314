"""The one place that reads the environment.

Every variable of the contract (SPEC "Environment variables") is parsed and validated here,
before any work starts, so a bad value fails the run with a message naming the variable.
Everything else in the package receives a :class:`Settings` instead of reading ``os.environ``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fdnix_assets.channels import (
    CHANNEL_PLACEHOLDER,
    CHANNEL_VARIABLE,
    CHANNELS_VARIABLE,
    DEFAULT_CHANNEL_NIXPKGS,
    ChannelError,
    channel_layer_arn,
    channel_source,
    parse_channels,
)
from fdnix_assets.nix.extract import redact_url

PROCESSING_MODES = {
    "metadata": "metadata_job",
    "embedding": "embedding_job",
    "minified": "minified_job",
    "both": "full_job",
    "full": "full_job",
}
EMBEDDING_BACKENDS = ("local", "bedrock")
TRUTHY = {"1", "true", "yes", "on"}
FALSY = {"", "0", "false", "no", "off"}

LOCAL_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_MODEL_DIMENSIONS = 384
TITAN_V2_DIMENSIONS = (256, 512, 1024)

_BUCKET_RE = re.compile(r"^(?!xn--)(?!.*-s3alias$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_LAYER_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[A-Za-z0-9_-]{1,140}(:\d+)?$"
)
_LAYER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,140}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_IP_ADDRESS_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{1,512}$")


class SettingsError(ValueError):
    """A configuration variable is missing or has a value the indexer cannot use."""


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUTHY:
        return True
    if value in FALSY:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean: use true/false, 1/0 or yes/no")


def _parse_int(name: str, raw: str | None, default: int, minimum: int = 1) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def validate_bucket(name: str, value: str) -> str:
    if not _BUCKET_RE.match(value) or ".." in value or _IP_ADDRESS_RE.match(value):
        raise SettingsError(
            f"{name}={value!r} is not a valid S3 bucket name "
            "(3-63 lowercase letters, digits, dots and hyphens, not an IP address)"
        )
    return value


def validate_key_prefix(name: str, value: str) -> str:
    stripped = value.strip("/")
    if not _KEY_RE.match(stripped) or any(part in ("", ".", "..") for part in stripped.split("/")):
        raise SettingsError(
            f"{name}={value!r} is not a usable S3 key prefix "
            "(letters, digits and !_.*'()-/ only, no empty, '.' or '..' segments)"
        )
    return stripped


def validate_listing_source(name: str, value: str) -> str:
    """NIXPKGS_JSON: a local path, ``file://``, ``http(s)://`` or ``s3://bucket/key``."""
    parsed = urllib.parse.urlsplit(value)
    scheme = parsed.scheme.lower()
    # "C:" style drive letters and plain paths have no usable scheme.
    if len(scheme) <= 1 or scheme == "file":
        return value
    shown = redact_url(value)
    if scheme == "s3":
        if not parsed.netloc or not parsed.path.strip("/"):
            raise SettingsError(f"{name}={shown!r} is not an S3 object URL (s3://bucket/key)")
        try:
            validate_bucket(name, parsed.netloc)
        except SettingsError as error:
            reason = str(error).split(" ", 1)[1]
            raise SettingsError(f"{name}={shown!r}: {parsed.netloc!r} {reason}") from None
        return value
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise SettingsError(f"{name}={shown!r} has no host name")
        return value
    raise SettingsError(
        f"{name}={shown!r}: unsupported scheme {scheme!r}; use a file path, "
        "file://, http://, https:// or s3://bucket/key"
    )


def validate_nixpkgs(name: str, value: str) -> str:
    """NIXPKGS: ``<nixpkgs>`` (a NIX_PATH entry), a local path, or an http(s) tarball URL."""
    scheme = urllib.parse.urlsplit(value).scheme.lower()
    if "://" in value and scheme not in ("http", "https"):
        raise SettingsError(
            f"{name}={redact_url(value)!r}: nix-env evaluates a path, <nixpkgs> or an "
            "http(s):// tarball URL; for a ready JSON listing set NIXPKGS_JSON instead"
        )
    return value


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one indexer run."""

    aws_region: str = "us-east-1"
    processing_mode: str = "both"
    nixpkgs: str = "<nixpkgs>"
    nixpkgs_json: str | None = None
    output_path: Path = Path("out/fdnix-data.lancedb")
    output_minified_path: Path = Path("out/fdnix.lancedb")
    lancedb_path: Path | None = None
    artifacts_bucket: str | None = None
    lancedb_data_key: str = "snapshots/fdnix-data.lancedb"
    lancedb_minified_key: str = "snapshots/fdnix.lancedb"
    embedding_backend: str = "local"
    bedrock_role_arn: str | None = None
    bedrock_input_bucket: str | None = None
    bedrock_output_bucket: str | None = None
    bedrock_model_id: str = "amazon.titan-embed-text-v2:0"
    bedrock_output_dimensions: int = 256
    bedrock_batch_size: int = 10_000
    bedrock_poll_interval: int = 60
    bedrock_max_wait_time: int = 7_200
    publish_layer: bool = False
    layer_arn: str | None = None
    fts_stopwords: str | None = "english"
    fts_stemmer: str | None = "english"
    vector_index_partitions: int | None = None
    vector_index_sub_vectors: int | None = None
    # FDNIX_CHANNELS: one static partition per channel; empty means no partitions.
    channels: tuple[str, ...] = ()
    # FDNIX_CHANNEL: the one channel the entry point runs (default: each in turn).
    channel: str | None = None

    @property
    def job_name(self) -> str:
        return PROCESSING_MODES[self.processing_mode]

    @property
    def uses_s3(self) -> bool:
        return self.artifacts_bucket is not None

    @property
    def embedding_model_id(self) -> str:
        return LOCAL_MODEL_ID if self.embedding_backend == "local" else self.bedrock_model_id

    @property
    def embedding_dimensions(self) -> int:
        if self.embedding_backend == "local":
            return LOCAL_MODEL_DIMENSIONS
        return self.bedrock_output_dimensions

    @property
    def work_dir(self) -> Path:
        """Scratch space beside the outputs, so finished datasets move in with a rename."""
        return self.output_path.parent / ".fdnix-work"

    @property
    def layer_name(self) -> str | None:
        if self.layer_arn is None:
            return None
        if ":layer:" not in self.layer_arn:
            return self.layer_arn
        return self.layer_arn.split(":layer:", 1)[1].split(":", 1)[0]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Reads and validates every variable; a :class:`SettingsError` names the first bad one."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    if get("DUCKDB_KEY") is not None:
        raise SettingsError(
            "DUCKDB_KEY is no longer supported: the datasets are LanceDB now. "
            "Set LANCEDB_DATA_KEY (main dataset) and LANCEDB_MINIFIED_KEY (minified dataset) "
            "instead, and unset DUCKDB_KEY."
        )

    mode = (get("PROCESSING_MODE") or "both").lower()
    if mode not in PROCESSING_MODES:
        raise SettingsError(
            f"PROCESSING_MODE={env.get('PROCESSING_MODE')!r} is not one of "
            + ", ".join(sorted(PROCESSING_MODES))
        )

    backend = (get("EMBEDDING_BACKEND") or "local").lower()
    if backend not in EMBEDDING_BACKENDS:
        raise SettingsError(
            f"EMBEDDING_BACKEND={env.get('EMBEDDING_BACKEND')!r} is not one of "
            + ", ".join(EMBEDDING_BACKENDS)
        )

    region = get("AWS_REGION") or get("AWS_DEFAULT_REGION") or "us-east-1"
    if not _REGION_RE.match(region):
        raise SettingsError(f"AWS_REGION={region!r} is not an AWS region name like us-east-1")

    buckets: dict[str, str | None] = {}
    for name in ("ARTIFACTS_BUCKET", "BEDROCK_INPUT_BUCKET", "BEDROCK_OUTPUT_BUCKET"):
        value = get(name)
        buckets[name] = None if value is None else validate_bucket(name, value)

    role_arn = get("BEDROCK_ROLE_ARN")
    if role_arn is not None and not _ROLE_ARN_RE.match(role_arn):
        raise SettingsError(
            f"BEDROCK_ROLE_ARN={role_arn!r} is not an IAM role ARN "
            "(arn:aws:iam::<12-digit account>:role/<name>)"
        )

    channels, channel = _channel_settings(get)
    sources = _channel_sources(get, channels)

    layer_arn = get("LAYER_ARN")
    _check_placeholder("LAYER_ARN", layer_arn, channels)
    # Each channel publishes its own layer; the name must be valid for every one of them.
    layer_arns = [channel_layer_arn(layer_arn, name) for name in channels] or [layer_arn]
    # A bare layer name is what PublishLayerVersion takes too.
    if layer_arn is not None and not all(
        _LAYER_ARN_RE.match(arn) or _LAYER_NAME_RE.match(arn) for arn in layer_arns if arn
    ):
        raise SettingsError(
            f"LAYER_ARN={layer_arn!r} is not a Lambda layer ARN "
            "(arn:aws:lambda:<region>:<account>:layer:<name>) or layer name"
        )

    dimensions = _parse_int("BEDROCK_OUTPUT_DIMENSIONS", get("BEDROCK_OUTPUT_DIMENSIONS"), 256)
    if dimensions not in TITAN_V2_DIMENSIONS:
        raise SettingsError(
            f"BEDROCK_OUTPUT_DIMENSIONS={dimensions} is not one Titan Text Embeddings v2 "
            f"offers: {', '.join(map(str, TITAN_V2_DIMENSIONS))}"
        )

    partitions = get("VECTOR_INDEX_PARTITIONS")
    sub_vectors = get("VECTOR_INDEX_SUB_VECTORS")

    stemmer = env.get("FTS_STEMMER")
    stopwords = env.get("FTS_STOPWORDS")

    output_path = Path(get("OUTPUT_PATH") or "out/fdnix-data.lancedb")
    minified_path = Path(get("OUTPUT_MINIFIED_PATH") or "out/fdnix.lancedb")
    lancedb_path = get("LANCEDB_PATH")

    settings = Settings(
        aws_region=region,
        processing_mode=mode,
        nixpkgs=sources.nixpkgs,
        nixpkgs_json=sources.nixpkgs_json,
        output_path=output_path,
        output_minified_path=minified_path,
        lancedb_path=Path(lancedb_path) if lancedb_path else None,
        artifacts_bucket=buckets["ARTIFACTS_BUCKET"],
        lancedb_data_key=validate_key_prefix(
            "LANCEDB_DATA_KEY", get("LANCEDB_DATA_KEY") or "snapshots/fdnix-data.lancedb"
        ),
        lancedb_minified_key=validate_key_prefix(
            "LANCEDB_MINIFIED_KEY", get("LANCEDB_MINIFIED_KEY") or "snapshots/fdnix.lancedb"
        ),
        embedding_backend=backend,
        bedrock_role_arn=role_arn,
        bedrock_input_bucket=buckets["BEDROCK_INPUT_BUCKET"],
        bedrock_output_bucket=buckets["BEDROCK_OUTPUT_BUCKET"],
        bedrock_model_id=get("BEDROCK_MODEL_ID") or "amazon.titan-embed-text-v2:0",
        bedrock_output_dimensions=dimensions,
        bedrock_batch_size=_parse_int("BEDROCK_BATCH_SIZE", get("BEDROCK_BATCH_SIZE"), 10_000),
        bedrock_poll_interval=_parse_int("BEDROCK_POLL_INTERVAL", get("BEDROCK_POLL_INTERVAL"), 60),
        bedrock_max_wait_time=_parse_int(
            "BEDROCK_MAX_WAIT_TIME", get("BEDROCK_MAX_WAIT_TIME"), 7_200
        ),
        publish_layer=parse_bool("PUBLISH_LAYER", env.get("PUBLISH_LAYER")),
        layer_arn=layer_arn,
        fts_stopwords="english" if stopwords is None else (stopwords.strip() or None),
        fts_stemmer="english" if stemmer is None else (stemmer.strip() or None),
        vector_index_partitions=(
            None if partitions is None else _parse_int("VECTOR_INDEX_PARTITIONS", partitions, 0)
        ),
        vector_index_sub_vectors=(
            None if sub_vectors is None else _parse_int("VECTOR_INDEX_SUB_VECTORS", sub_vectors, 1)
        ),
        channels=channels,
        channel=channel,
    )
    if backend == "bedrock" and role_arn is None:
        raise SettingsError("EMBEDDING_BACKEND=bedrock needs BEDROCK_ROLE_ARN (the batch job role)")
    return settings


@dataclass(frozen=True)
class _Sources:
    nixpkgs: str
    nixpkgs_json: str | None


def _check_placeholder(name: str, value: str | None, channels: tuple[str, ...]) -> None:
    if value is not None and CHANNEL_PLACEHOLDER in value and not channels:
        raise SettingsError(
            f"{name}={redact_url(value)!r} holds {CHANNEL_PLACEHOLDER}, but {CHANNELS_VARIABLE} "
            "is not set: list the channels (e.g. FDNIX_CHANNELS=nixos-unstable,nixos-25.11)"
        )


def _channel_settings(
    get: Callable[[str], str | None],
) -> tuple[tuple[str, ...], str | None]:
    """FDNIX_CHANNELS (the partitions) and FDNIX_CHANNEL (the one the entry point runs)."""
    # Literal names, so tooling that scans for get("...") (the compose pass-through test)
    # sees them.
    raw = get("FDNIX_CHANNELS")
    channels: tuple[str, ...] = ()
    if raw is not None:
        try:
            channels = parse_channels(raw)
        except ChannelError as error:
            raise SettingsError(f"{CHANNELS_VARIABLE}={raw!r}: {error}") from None
    channel = get("FDNIX_CHANNEL")
    if channel is not None and channel not in channels:
        listed = (
            f"not one of {CHANNELS_VARIABLE} ({', '.join(channels)})"
            if channels
            else f"set, but {CHANNELS_VARIABLE} is not: list the channels there"
        )
        raise SettingsError(f"{CHANNEL_VARIABLE}={channel!r} is {listed}")
    return channels, channel


def _channel_sources(get: Callable[[str], str | None], channels: tuple[str, ...]) -> _Sources:
    """NIXPKGS and NIXPKGS_JSON, validated as every channel will see them.

    With channels, NIXPKGS defaults to the channel's tarball on channels.nixos.org, and the
    source that is read must name ``{channel}`` when there are several channels: otherwise
    every channel would index the same packages.
    """
    raw_nixpkgs = get("NIXPKGS")
    raw_json = get("NIXPKGS_JSON")
    for name, value in (("NIXPKGS", raw_nixpkgs), ("NIXPKGS_JSON", raw_json)):
        _check_placeholder(name, value, channels)
    nixpkgs = raw_nixpkgs or (DEFAULT_CHANNEL_NIXPKGS if channels else "<nixpkgs>")
    read_name, read_value = ("NIXPKGS_JSON", raw_json) if raw_json else ("NIXPKGS", nixpkgs)
    if len(channels) > 1 and CHANNEL_PLACEHOLDER not in read_value:
        raise SettingsError(
            f"{read_name}={redact_url(read_value)!r} has no {CHANNEL_PLACEHOLDER} placeholder, "
            f"but {CHANNELS_VARIABLE} lists {len(channels)} channels: every channel would index "
            f"the same packages (e.g. {read_name}=.../{CHANNEL_PLACEHOLDER}/...)"
        )
    for channel in channels or (None,):
        validate_nixpkgs("NIXPKGS", channel_source(nixpkgs, channel))
        if raw_json is not None:
            validate_listing_source("NIXPKGS_JSON", channel_source(raw_json, channel))
    return _Sources(nixpkgs=nixpkgs, nixpkgs_json=raw_json)
