"""Packaging the minified dataset as an AWS Lambda layer, and publishing it.

Layout of the layer zip (Lambda unpacks a layer under ``/opt``):

- ``fdnix/fdnix.lancedb/``: the minified dataset, so the handler opens
  ``/opt/fdnix/fdnix.lancedb`` (its default ``FDNIX_DATASET_PATH``).
- ``python/fdnix_assets/``: the search modules the handler needs (:data:`SHIPPED_MODULES`)
  beside a stub ``__init__.py`` that imports nothing; Lambda puts ``/opt/python`` on
  ``sys.path``, so the function's handler setting is ``fdnix_assets.lambda_handler.handler``.

The runtime dependencies of that code (lancedb, pyarrow, numpy) are *not* in this layer: next
to a dataset of about 150 MB they do not fit. The function's own package or a separate
dependencies layer provides them, and the size budget reserves room for them
(:attr:`SizeBudget.reserved_unzipped_bytes`, 50 MiB unless configured). Lambda's Python
runtime already provides boto3. Measured here (x86_64, Python 3.11), lancedb 0.40 alone
installs 187 MB and with pyarrow and numpy 428 MB, above the 250 MB limit without any data:
as released, they fit only a container-image function (10 GB), which takes no layers but can
copy this zip's contents to ``/opt`` at build time. The asset warns when the layer plus the
installed dependencies exceed the limit. The all-MiniLM-L6-v2 files a locally embedded
dataset needs for query vectors (``FDNIX_MINILM_DIR``, 91 MB) are not in the layer either:
without them the handler answers from the text indexes and says so.

The zip is deterministic: entries sorted by name, every timestamp 1980-01-01, every file mode
0644, no extra attributes, the same compressor. Building it twice from the same files gives
the same bytes (with the same zlib), so its SHA-256 identifies the content and a rerun on an
unchanged dataset publishes nothing.

The zip goes through S3 (``ARTIFACTS_BUCKET``, ``layers/<layer name>/<sha256>.zip``) whenever
a bucket is configured, whatever its size: one code path, and the upload is verified before
Lambda reads it. Without a bucket, a zip of at most 50 MB is sent inline in the
``PublishLayerVersion`` request; a larger one is refused with a message naming
``ARTIFACTS_BUCKET``. Lambda reads the zip only from a bucket in the layer's own region.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

LAYER_DATASET_DIR = "fdnix/fdnix.lancedb"
LAYER_PACKAGE_DIR = "python/fdnix_assets"
RUNTIME_DATASET_PATH = "/opt/" + LAYER_DATASET_DIR
HANDLER = "fdnix_assets.lambda_handler.handler"
PACKAGE_NAME = "fdnix_assets"

# The handler and everything it imports from this package; `shipped_code_problems` refuses a
# zip whose modules import a sibling that is not listed here.
SHIPPED_MODULES: tuple[str, ...] = (
    "search.py",
    "search_embedding.py",
    "search_vectors.py",
    "lambda_handler.py",
)
PACKAGE_STUB = b'"""fdnix search code shipped in the Lambda layer; imports nothing on purpose."""\n'

# Lambda's limits, in the bytes its error messages use (250 MiB and 50 MiB).
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000
DIRECT_UPLOAD_LIMIT_BYTES = 52_428_800
# Room left for the function's own package and its other layers (lancedb, pyarrow, numpy)
# unless configured otherwise; see the module docstring.
DEFAULT_RESERVED_UNZIPPED_BYTES = 52_428_800
DEFAULT_KEEP_VERSIONS = 5
DEFAULT_KEY_PREFIX = "layers"
COMPATIBLE_RUNTIMES = ("python3.11", "python3.12", "python3.13")
COMPATIBLE_ARCHITECTURES = ("x86_64", "arm64")
# Modules Lambda's Python runtime provides, not counted in the dependency estimate.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "urllib3"})

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644
ZIP_CREATE_SYSTEM_UNIX = 3
# Fixed part size, so the multipart ETag S3 reports can be computed here and compared.
UPLOAD_PART_BYTES = 16 * 1024 * 1024
SHA256_IN_DESCRIPTION = re.compile(r"sha256:([0-9a-f]{64})")
DESCRIPTION_LIMIT = 256
_LAYER_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"layer:(?P<name>[A-Za-z0-9_-]{1,140})(:\d+)?$"
)
_CHUNK = 1024 * 1024


class LayerError(RuntimeError):
    """The layer cannot be built or published; the message names the input and the problem."""


class LayerTooLargeError(LayerError):
    """The layer would not fit Lambda's size limits."""


@dataclass(frozen=True)
class LayerTarget:
    """Which layer to publish to, from ``LAYER_ARN`` (an ARN, or a bare layer name)."""

    name: str
    arn: str | None = None
    region: str | None = None


def parse_layer_target(layer_arn: str | None) -> LayerTarget:
    """The layer name and region that ``LAYER_ARN`` names; a trailing ``:<version>`` is ignored.

    Publishing always adds a new version, so a versioned ARN names the same layer.
    """
    if layer_arn is None or not layer_arn.strip():
        raise LayerError(
            "PUBLISH_LAYER is on but LAYER_ARN is not set: set LAYER_ARN to the layer's ARN "
            "(arn:aws:lambda:<region>:<account>:layer:<name>) or its name"
        )
    value = layer_arn.strip()
    match = _LAYER_ARN.match(value)
    if match:
        arn = (
            f"arn:{match['partition']}:lambda:{match['region']}:{match['account']}:"
            f"layer:{match['name']}"
        )
        return LayerTarget(name=match["name"], arn=arn, region=match["region"])
    if re.fullmatch(r"[A-Za-z0-9_-]{1,140}", value):
        return LayerTarget(name=value)
    raise LayerError(
        f"LAYER_ARN={value!r} is not a Lambda layer ARN "
        "(arn:aws:lambda:<region>:<account>:layer:<name>) or layer name"
    )


@dataclass(frozen=True)
class LayerZip:
    """A built layer zip and what identifies it."""

    path: Path
    sha256: str
    zip_bytes: int
    unzipped_bytes: int
    file_count: int
    dataset_bytes: int
    code_files: tuple[str, ...]

    @property
    def code_sha256_base64(self) -> str:
        """The form Lambda reports as ``CodeSha256``."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def shipped_code_problems(code_dir: Path, modules: Sequence[str]) -> list[str]:
    """Why the listed modules would fail to import from the layer, if they would.

    Each shipped module may import siblings from ``fdnix_assets`` only if they are shipped too:
    the layer's ``__init__.py`` is a stub and nothing else of the package is there.
    """
    shipped = {module.removesuffix(".py") for module in modules}
    problems = []
    for module in modules:
        path = code_dir / module
        if not path.is_file():
            problems.append(f"{path} does not exist")
            continue
        for imported in _package_imports(path):
            if imported not in shipped:
                problems.append(
                    f"{path.name} imports {PACKAGE_NAME}.{imported}, which is not shipped "
                    f"(add {imported}.py to SHIPPED_MODULES)"
                )
    return problems


def _package_imports(path: Path) -> set[str]:
    """Sibling modules of ``fdnix_assets`` that ``path`` imports, absolute or relative."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE_NAME and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level == 0 and parts[:1] == [PACKAGE_NAME]:
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 1:
                found.update([parts[0]] if parts else [alias.name for alias in node.names])
    return found


def third_party_imports(code_dir: Path, modules: Sequence[str]) -> list[str]:
    """Top-level packages the shipped modules import at module level, outside the stdlib.

    Imports inside functions are left out: they are optional paths the handler may not take.
    """
    names: set[str] = set()
    for module in modules:
        tree = ast.parse((code_dir / module).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(
        name
        for name in names
        if name != PACKAGE_NAME and name not in sys.stdlib_module_names and name != "__future__"
    )


def installed_footprint_bytes(import_names: Iterable[str]) -> dict[str, int]:
    """Installed size of the distributions behind ``import_names`` and their requirements.

    An estimate of what a dependencies layer for the shipped code holds on this platform.
    Distributions Lambda's runtime provides (boto3 and friends) are not counted.
    """
    by_import = importlib_metadata.packages_distributions()
    pending = [dist for name in import_names for dist in by_import.get(name, [])]
    sizes: dict[str, int] = {}
    while pending:
        name = pending.pop()
        key = _normalize_distribution(name)
        if key in sizes or key in RUNTIME_PROVIDED:
            continue
        try:
            dist = importlib_metadata.distribution(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        sizes[key] = sum(f.size or 0 for f in dist.files or [] if f.size)
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            pending.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    return dict(sorted(sizes.items()))


def _normalize_distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def layer_entries(
    dataset_dir: Path, code_dir: Path, modules: Sequence[str] = SHIPPED_MODULES
) -> list[tuple[str, Path | bytes]]:
    """Every file of the layer as (name inside the zip, source), sorted by name."""
    if not dataset_dir.is_dir():
        raise LayerError(f"the minified dataset {dataset_dir} is not a directory")
    if not any(dataset_dir.glob("*.lance")):
        raise LayerError(
            f"the minified dataset {dataset_dir} holds no LanceDB table (no *.lance directory)"
        )
    problems = shipped_code_problems(code_dir, modules)
    if problems:
        raise LayerError("the search code cannot be shipped: " + "; ".join(problems))
    entries: list[tuple[str, Path | bytes]] = [(f"{LAYER_PACKAGE_DIR}/__init__.py", PACKAGE_STUB)]
    entries += [(f"{LAYER_PACKAGE_DIR}/{module}", code_dir / module) for module in modules]
    for path in sorted(dataset_dir.rglob("*")):
        if path.is_symlink():
            raise LayerError(f"{path} is a symbolic link; a layer holds regular files only")
        if path.is_file():
            entries.append(
                (f"{LAYER_DATASET_DIR}/{path.relative_to(dataset_dir).as_posix()}", path)
            )
    return sorted(entries, key=lambda entry: entry[0])


def build_layer_zip(
    dataset_dir: Path,
    code_dir: Path,
    target: Path,
    modules: Sequence[str] = SHIPPED_MODULES,
) -> LayerZip:
    """Writes the layer zip to ``target`` (which must lie outside the dataset) and hashes it."""
    dataset_root = dataset_dir.resolve()
    if target.resolve().is_relative_to(dataset_root):
        raise LayerError(
            f"the layer zip {target} would be written inside the dataset {dataset_dir}; "
            "build it in a separate work directory so no zip ends up in a later layer"
        )
    entries = layer_entries(dataset_dir, code_dir, modules)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    unzipped = dataset_bytes = 0
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, source in entries:
            size = len(source) if isinstance(source, bytes) else source.stat().st_size
            unzipped += size
            if name.startswith(LAYER_DATASET_DIR + "/"):
                dataset_bytes += size
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = ZIP_CREATE_SYSTEM_UNIX
            info.external_attr = ZIP_FILE_MODE << 16
            info.file_size = size
            with archive.open(info, "w") as sink:
                if isinstance(source, bytes):
                    sink.write(source)
                else:
                    with source.open("rb") as stream:
                        shutil.copyfileobj(stream, sink, _CHUNK)
    partial.replace(target)
    return LayerZip(
        path=target,
        sha256=file_sha256(target),
        zip_bytes=target.stat().st_size,
        unzipped_bytes=unzipped,
        file_count=len(entries),
        dataset_bytes=dataset_bytes,
        code_files=tuple(name for name, _ in entries if name.startswith(LAYER_PACKAGE_DIR)),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SizeBudget:
    """Lambda's limits, and what the function's package and other layers already take."""

    unzipped_limit_bytes: int = LAMBDA_UNZIPPED_LIMIT_BYTES
    reserved_unzipped_bytes: int = DEFAULT_RESERVED_UNZIPPED_BYTES
    direct_upload_limit_bytes: int = DIRECT_UPLOAD_LIMIT_BYTES

    @property
    def layer_allowance_bytes(self) -> int:
        return self.unzipped_limit_bytes - self.reserved_unzipped_bytes

    def headroom_bytes(self, layer: LayerZip) -> int:
        return self.layer_allowance_bytes - layer.unzipped_bytes

    def problems(self, layer: LayerZip, via_s3: bool) -> list[str]:
        """Why Lambda would refuse this layer (or a function using it); empty when it fits."""
        problems = []
        if layer.unzipped_bytes > self.layer_allowance_bytes:
            problems.append(
                f"the layer unzips to {_mb(layer.unzipped_bytes)} ({layer.dataset_bytes:,} bytes "
                f"of dataset), but a function and all its layers must stay under "
                f"{_mb(self.unzipped_limit_bytes)} unzipped and {_mb(self.reserved_unzipped_bytes)}"
                f" is reserved for the function's package and other layers, leaving "
                f"{_mb(self.layer_allowance_bytes)} for this layer"
            )
        if not via_s3 and layer.zip_bytes > self.direct_upload_limit_bytes:
            problems.append(
                f"the zip is {_mb(layer.zip_bytes)}, above the "
                f"{_mb(self.direct_upload_limit_bytes)} Lambda accepts in a direct upload; "
                "set ARTIFACTS_BUCKET so it goes through S3"
            )
        return problems

    def check(self, layer: LayerZip, via_s3: bool) -> None:
        problems = self.problems(layer, via_s3)
        if problems:
            raise LayerTooLargeError(
                f"layer {layer.path.name} is too large: " + "; ".join(problems)
            )


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MiB"


@dataclass(frozen=True)
class UploadedZip:
    bucket: str
    key: str
    etag: str
    reused: bool

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def layer_zip_key(prefix: str, layer_name: str, sha256: str) -> str:
    return f"{prefix.strip('/')}/{layer_name}/{sha256}.zip"


def ensure_outside_dataset_prefixes(key: str, dataset_prefixes: Iterable[str]) -> None:
    """Refuses an S3 key inside a dataset's prefix: a snapshot there would swallow old zips."""
    for prefix in dataset_prefixes:
        stripped = prefix.strip("/")
        if key == stripped or key.startswith(stripped + "/"):
            raise LayerError(
                f"the layer zip key {key!r} lies inside the dataset prefix {stripped!r}; "
                "choose a layer key prefix outside LANCEDB_DATA_KEY and LANCEDB_MINIFIED_KEY"
            )


def expected_etag(path: Path, part_bytes: int = UPLOAD_PART_BYTES) -> str:
    """The ETag S3 gives ``path`` uploaded in parts of ``part_bytes``: MD5, or MD5 of part MD5s."""
    part_digests = []
    with path.open("rb") as stream:
        while chunk := stream.read(part_bytes):
            part_digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if path.stat().st_size < part_bytes:
        return (part_digests or [hashlib.md5(b"", usedforsecurity=False).digest()])[0].hex()
    combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(part_digests)}"


def upload_layer_zip(
    s3_client: Any, layer: LayerZip, bucket: str, key: str, part_bytes: int = UPLOAD_PART_BYTES
) -> UploadedZip:
    """Puts the zip at ``s3://bucket/key`` unless an identical object is there, then verifies it.

    Lambda does not reliably report a missing or truncated object (moto accepts one), so the
    object's size, ETag and recorded SHA-256 are compared before anything is published.
    """
    etag = expected_etag(layer.path, part_bytes)
    if _matching_object(s3_client, layer, bucket, key, etag):
        return UploadedZip(bucket, key, etag, reused=True)
    try:
        s3_client.upload_file(
            str(layer.path),
            bucket,
            key,
            ExtraArgs={"ContentType": "application/zip", "Metadata": {"sha256": layer.sha256}},
            Config=TransferConfig(
                multipart_threshold=part_bytes, multipart_chunksize=part_bytes, max_concurrency=4
            ),
        )
    except ClientError as error:
        raise LayerError(
            f"uploading {layer.path.name} to s3://{bucket}/{key} failed: {error}"
        ) from None
    if not _matching_object(s3_client, layer, bucket, key, etag):
        raise LayerError(
            f"s3://{bucket}/{key} does not match {layer.path.name} after upload "
            f"(expected {layer.zip_bytes:,} bytes, ETag {etag}, sha256 {layer.sha256})"
        )
    return UploadedZip(bucket, key, etag, reused=False)


def _matching_object(s3_client: Any, layer: LayerZip, bucket: str, key: str, etag: str) -> bool:
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise LayerError(f"cannot read s3://{bucket}/{key}: {error}") from None
    return (
        head.get("ContentLength") == layer.zip_bytes
        and head.get("ETag", "").strip('"') == etag
        and head.get("Metadata", {}).get("sha256") == layer.sha256
    )


@dataclass(frozen=True)
class LayerVersion:
    """One published version of the layer."""

    arn: str
    version: int
    description: str
    code_sha256: str = ""

    @property
    def sha256(self) -> str | None:
        """The zip's SHA-256 (hex): from ``CodeSha256`` when Lambda reports it, else the
        description this module wrote."""
        if self.code_sha256:
            return base64.b64decode(self.code_sha256).hex()
        match = SHA256_IN_DESCRIPTION.search(self.description)
        return match.group(1) if match else None


def layer_description(dataset: str, snapshot_id: str, sha256: str) -> str:
    text = f"fdnix {dataset} snapshot {snapshot_id} sha256:{sha256}"
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    room = DESCRIPTION_LIMIT - len(f"fdnix {dataset} snapshot  sha256:{sha256}")
    return f"fdnix {dataset} snapshot {snapshot_id[: max(room, 0)]} sha256:{sha256}"[
        :DESCRIPTION_LIMIT
    ]


def list_layer_versions(lambda_client: Any, layer_name: str) -> list[LayerVersion]:
    """Every version of the layer, newest first (an unknown layer has none)."""
    versions = []
    paginator = lambda_client.get_paginator("list_layer_versions")
    for page in paginator.paginate(LayerName=layer_name):
        for item in page.get("LayerVersions", []):
            versions.append(
                LayerVersion(
                    arn=item["LayerVersionArn"],
                    version=int(item["Version"]),
                    description=item.get("Description", ""),
                )
            )
    return sorted(versions, key=lambda v: v.version, reverse=True)


def describe_layer_version(lambda_client: Any, layer_name: str, version: int) -> LayerVersion:
    response = lambda_client.get_layer_version(LayerName=layer_name, VersionNumber=version)
    return LayerVersion(
        arn=response["LayerVersionArn"],
        version=int(response["Version"]),
        description=response.get("Description", ""),
        code_sha256=response.get("Content", {}).get("CodeSha256", ""),
    )


def prune_layer_versions(lambda_client: Any, layer_name: str, keep: int, protect: int) -> list[int]:
    """Deletes versions older than the newest ``keep``; never ``protect``. Returns deleted."""
    if keep < 1:
        raise LayerError(f"keeping {keep} layer versions would delete the one just published")
    versions = list_layer_versions(lambda_client, layer_name)
    deleted = []
    for version in versions[keep:]:
        if version.version == protect:
            continue
        lambda_client.delete_layer_version(LayerName=layer_name, VersionNumber=version.version)
        deleted.append(version.version)
    return deleted


def prune_layer_zips(
    s3_client: Any, bucket: str, prefix: str, keep_sha256: Iterable[str]
) -> list[str]:
    """Deletes zips under ``prefix`` that no kept layer version was published from."""
    keep = {f"{sha}.zip" for sha in keep_sha256}
    stale = []
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for item in page.get("Contents", []):
            if item["Key"].rsplit("/", 1)[-1] not in keep:
                stale.append(item["Key"])
    for start in range(0, len(stale), 1000):
        batch = [{"Key": key} for key in stale[start : start + 1000]]
        s3_client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    return stale


@dataclass(frozen=True)
class PublishRequest:
    """Everything that decides where and how a layer zip is published."""

    target: LayerTarget
    dataset: str
    snapshot_id: str
    artifacts_bucket: str | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    dataset_prefixes: tuple[str, ...] = ()
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    budget: SizeBudget = field(default_factory=SizeBudget)
    runtimes: tuple[str, ...] = COMPATIBLE_RUNTIMES
    architectures: tuple[str, ...] = COMPATIBLE_ARCHITECTURES
    upload_part_bytes: int = UPLOAD_PART_BYTES


@dataclass(frozen=True)
class PublishOutcome:
    """What publishing did, for materialization metadata."""

    version: LayerVersion
    published: bool
    layer: LayerZip
    upload: UploadedZip | None
    deleted_versions: list[int]
    deleted_zips: list[str]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "layer_version_arn": self.version.arn,
            "layer_version": self.version.version,
            "published": self.published,
            "zip_bytes": self.layer.zip_bytes,
            "unzipped_bytes": self.layer.unzipped_bytes,
            "dataset_bytes": self.layer.dataset_bytes,
            "file_count": self.layer.file_count,
            "sha256": self.layer.sha256,
            "zip_uri": self.upload.uri if self.upload else "(direct upload)",
            "versions_deleted": self.deleted_versions,
        }


def publish_layer_zip(
    lambda_client: Any,
    s3_client: Any | None,
    layer: LayerZip,
    request: PublishRequest,
    log: Callable[[str], None] = lambda message: None,
) -> PublishOutcome:
    """Publishes ``layer`` as a new version unless the newest version already holds it.

    Size limits are checked before anything is uploaded. Afterwards versions beyond the newest
    ``keep_versions`` are deleted (never the current one), with the S3 zips they came from.
    """
    via_s3 = request.artifacts_bucket is not None
    request.budget.check(layer, via_s3=via_s3)
    name = request.target.name
    versions = list_layer_versions(lambda_client, name)
    newest = describe_layer_version(lambda_client, name, versions[0].version) if versions else None
    if newest is not None and newest.sha256 == layer.sha256:
        log(f"layer {name} version {newest.version} already holds sha256 {layer.sha256}")
        current, published, upload = newest, False, None
    else:
        upload = None
        if request.artifacts_bucket is not None:
            if s3_client is None:
                raise LayerError("publishing through ARTIFACTS_BUCKET needs an S3 client")
            key = layer_zip_key(request.key_prefix, name, layer.sha256)
            ensure_outside_dataset_prefixes(key, request.dataset_prefixes)
            upload = upload_layer_zip(
                s3_client, layer, request.artifacts_bucket, key, request.upload_part_bytes
            )
            log(f"{'reused' if upload.reused else 'uploaded'} {upload.uri}")
            content: dict[str, Any] = {"S3Bucket": upload.bucket, "S3Key": upload.key}
        else:
            content = {"ZipFile": layer.path.read_bytes()}
        response = lambda_client.publish_layer_version(
            LayerName=name,
            Description=layer_description(request.dataset, request.snapshot_id, layer.sha256),
            Content=content,
            CompatibleRuntimes=list(request.runtimes),
            CompatibleArchitectures=list(request.architectures),
        )
        current = LayerVersion(
            arn=response["LayerVersionArn"],
            version=int(response["Version"]),
            description=response.get("Description", ""),
            code_sha256=response.get("Content", {}).get("CodeSha256", ""),
        )
        if current.code_sha256 and current.sha256 != layer.sha256:
            raise LayerError(
                f"Lambda reports CodeSha256 {current.code_sha256} for {current.arn}, "
                f"but the zip's is {layer.code_sha256_base64}"
            )
        published = True
        log(f"published {current.arn}")
    if request.target.arn and not current.arn.startswith(request.target.arn + ":"):
        log(f"warning: published {current.arn}, not a version of LAYER_ARN {request.target.arn}")
    # The new version is live by now: a retention failure is reported, not fatal.
    deleted: list[int] = []
    deleted_zips: list[str] = []
    try:
        deleted = prune_layer_versions(lambda_client, name, request.keep_versions, current.version)
        if request.artifacts_bucket is not None and s3_client is not None:
            kept = [v.sha256 for v in list_layer_versions(lambda_client, name)]
            deleted_zips = prune_layer_zips(
                s3_client,
                request.artifacts_bucket,
                f"{request.key_prefix.strip('/')}/{name}",
                [sha for sha in [*kept, layer.sha256] if sha],
            )
    except ClientError as error:
        log(f"warning: deleting old versions of layer {name} failed: {error}")
    return PublishOutcome(current, published, layer, upload, deleted, deleted_zips)
