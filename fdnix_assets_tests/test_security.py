"""Security: no secret leaks anywhere a run leaves traces, no path escapes, hostile input is
refused or treated as data, the code runs without root, and CI installs what the lock pins.

The leak test runs the real container entry point (``full_job``: metadata, local embeddings,
minified dataset, layer published to the moto Lambda) with recognisable fake secrets in the
environment and in a ``NIXPKGS_JSON`` URL that the dump server actually checks, then searches
everything the run produced: its output, every file it wrote (SQLite blobs decompressed), the
Dagster instance's runs, event logs and snapshots, every S3 object (zip entries unpacked) and
the published layer versions.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.server
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import boto3
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from fdnix_assets import lambda_handler
from fdnix_assets.lambda_handler import decode_body, handler
from fdnix_assets.search import InvalidQuery, sql_string
from fdnix_assets.settings import SettingsError, load_settings
from fdnix_assets.storage import StorageError, check_snapshot_id
from fdnix_assets.storage_s3 import S3DatasetStore, resolve_s3_dataset, safe_relative_path
from fdnix_assets_tests import search_support
from fdnix_assets_tests.bedrock_standin import BedrockStandIn
from fdnix_assets_tests.conftest import (
    REPO_ROOT,
    RUN_CONFIG_VARIABLES,
    SAMPLE_LISTING,
    TEST_NIXPKGS,
)

RUN_TIMEOUT_SECONDS = 300
ACCESS_KEY_ID = "AKIAFDNIXLEAKCHECK01"
SECRET_ACCESS_KEY = "fdnixSecretKey7Qw3Zr9Lm2Xp5Vb8Nc1Td4Hg6Jk0"
SESSION_TOKEN = "fdnixSessionToken5Yh8Ue2Wq7Ri4Op1As9Df3Gj6Kl0Zx"
URL_USER = "fdnixdumpuser"
URL_PASSWORD = "fdnixUrlPassword3Mn6Bv9Cx2Za5"
URL_TOKEN = "fdnixQueryToken8Pl4Ok7Ij1Uh5"
URL_SIGNATURE = "fdnixSig0e4f9a2b7c1d8e3f6a5b4c9d2e7f1a8b3c6d"
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "AWS_SESSION_TOKEN": SESSION_TOKEN,
    "URL password": URL_PASSWORD,
    "URL query token": URL_TOKEN,
    "presigned URL signature": URL_SIGNATURE,
    "Basic authorization header": base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode(),
}
# Enough for one Bedrock batch job (at least 100 records) besides the hostile ones.
LEAK_CHECK_PACKAGES = 110
ROLE_ARN = "arn:aws:iam::123456789012:role/fdnix-leak-check"
# Attribute paths that would escape a directory if any code made file names of them.
HOSTILE_ATTR_PATHS = (
    "../../../escape-attr-dotdot",
    "/tmp/escape-attr-absolute",
    "nested/escape-attr-slash",
    "..\\..\\escape-attr-backslash",
)
# Variables of the developer's shell that would change what a run does.


def leak_check_dump() -> bytes:
    packages = json.loads(SAMPLE_LISTING.read_bytes())
    chosen = {name: packages[name] for name in list(packages)[:LEAK_CHECK_PACKAGES]}
    template = next(iter(chosen.values()))
    for index, attr_path in enumerate(HOSTILE_ATTR_PATHS):
        record = copy.deepcopy(template)
        record["meta"]["description"] = f"hostile attribute path number {index}"
        chosen[attr_path] = record
    return json.dumps(chosen).encode()


def run_entrypoint(
    prefix: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The container entry point as a subprocess (``prefix``: a command that wraps it)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "fdnix_assets.entrypoint"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )


def clean_environment() -> dict[str, str]:
    """This process's environment without the contract's variables and AWS settings."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in RUN_CONFIG_VARIABLES and not name.startswith("AWS_")
    }


class _AuthenticatedDump(http.server.BaseHTTPRequestHandler):
    """Serves the dump only to a request with the Basic credentials and the query token."""

    dump = b""
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        authorized = (
            self.headers.get("Authorization") == expected
            and query.get("token") == [URL_TOKEN]
            and query.get("X-Amz-Signature") == [URL_SIGNATURE]
        )
        self.requests.append(f"{self.path.split('?')[0]} authorized={authorized}")
        body = self.dump if authorized else b"denied"
        self.send_response(200 if authorized else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class FullRun:
    """What the leak-check run produced and where."""

    workdir: Path
    dagster_home: Path
    bucket: str
    endpoint: str
    completed: subprocess.CompletedProcess[str]
    source_shown: str
    dump_requests: list[str]
    bedrock_jobs: int

    def assert_succeeded(self) -> None:
        output = (self.completed.stdout + self.completed.stderr)[-4000:]
        assert self.completed.returncode == 0, output
        assert self.bedrock_jobs == 1, f"no Bedrock batch job was created:\n{output}"


@pytest.fixture(scope="module")
def full_run(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullRun]:
    workdir = tmp_path_factory.mktemp("leak-check")
    bucket = f"fdnix-leak-{uuid.uuid4().hex[:10]}"
    s3 = s3_client(moto_endpoint)
    for name in (bucket, f"{bucket}-in", f"{bucket}-out"):
        s3.create_bucket(Bucket=name)
    bedrock = BedrockStandIn(moto_endpoint)
    bedrock_endpoint = bedrock.start()

    handler_class = type(
        "DumpHandler", (_AuthenticatedDump,), {"dump": leak_check_dump(), "requests": []}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    query = urllib.parse.urlencode(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{ACCESS_KEY_ID}/20261125/us-east-1/s3/aws4_request",
            "X-Amz-Signature": URL_SIGNATURE,
            "token": URL_TOKEN,
        }
    )
    source = f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/nixpkgs.json?{query}"

    dagster_home = workdir / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = clean_environment()
    env |= {
        "PROCESSING_MODE": "both",
        "NIXPKGS_JSON": source,
        "ARTIFACTS_BUCKET": bucket,
        "EMBEDDING_BACKEND": "bedrock",
        "BEDROCK_ROLE_ARN": ROLE_ARN,
        "BEDROCK_INPUT_BUCKET": f"{bucket}-in",
        "BEDROCK_OUTPUT_BUCKET": f"{bucket}-out",
        "BEDROCK_POLL_INTERVAL": "1",
        "AWS_ENDPOINT_URL_BEDROCK": bedrock_endpoint,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_endpoint,
        "PUBLISH_LAYER": "true",
        "LAYER_ARN": "fdnix-leak-check",
        "OUTPUT_PATH": str(workdir / "out" / "fdnix-data.lancedb"),
        "OUTPUT_MINIFIED_PATH": str(workdir / "out" / "fdnix.lancedb"),
        "DAGSTER_HOME": str(dagster_home),
        "HF_HUB_OFFLINE": "1",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ENDPOINT_URL_LAMBDA": moto_endpoint,
        "AWS_ENDPOINT_URL_STS": moto_endpoint,
    }
    try:
        completed = run_entrypoint([], env, workdir)
    finally:
        server.shutdown()
        server.server_close()
        bedrock.stop()
    shown = f"http://127.0.0.1:{port}/nixpkgs.json"
    yield FullRun(
        workdir,
        dagster_home,
        bucket,
        moto_endpoint,
        completed,
        shown,
        list(handler_class.requests),
        bedrock.created_job_count,
    )


def s3_client(endpoint: str) -> Any:
    """A client of the test's own (moto accepts any credentials: these are not the secret)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="inspector",
        aws_secret_access_key="inspector-secret",
    )


def sqlite_texts(path: Path) -> Iterator[str]:
    """Every value in every table of a SQLite file; blobs zlib-decompressed when they are."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
        for table in tables:
            try:
                rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()
            except sqlite3.DatabaseError:
                continue
            for row in rows:
                for value in row:
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            value = zlib.decompress(value)
                        yield value.decode("utf-8", "replace")
                    elif value is not None:
                        yield str(value)


def zip_texts(data: bytes) -> Iterator[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            yield info.filename
            yield archive.read(info).decode("utf-8", "replace")


def everything_produced(run: FullRun) -> dict[str, str]:
    """Where -> text, for every place the run left something."""
    found: dict[str, str] = {
        "entry point stdout": run.completed.stdout,
        "entry point stderr": run.completed.stderr,
    }
    for path in sorted(run.workdir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found[f"file {path}"] = data.decode("utf-8", "replace")
            if data.startswith(b"SQLite format 3"):
                found[f"sqlite {path}"] = "\n".join(sqlite_texts(path))
            if data.startswith(b"PK"):
                found[f"zip {path}"] = "\n".join(zip_texts(data))

    with DagsterInstance.from_config(str(run.dagster_home)) as instance:
        runs = instance.get_runs()
        found["instance: runs"] = "\n".join(serialize_value(r) for r in runs)
        for dagster_run in runs:
            logs = instance.all_logs(dagster_run.run_id)
            found[f"event log of {dagster_run.run_id}"] = "\n".join(
                serialize_value(entry) for entry in logs
            )
            if dagster_run.job_snapshot_id:
                snapshot = instance.get_job_snapshot(dagster_run.job_snapshot_id)
                found[f"job snapshot of {dagster_run.run_id}"] = serialize_value(snapshot)
            if dagster_run.execution_plan_snapshot_id:
                plan = instance.get_execution_plan_snapshot(dagster_run.execution_plan_snapshot_id)
                found[f"plan snapshot of {dagster_run.run_id}"] = serialize_value(plan)

    s3 = s3_client(run.endpoint)
    for bucket in (run.bucket, f"{run.bucket}-in", f"{run.bucket}-out"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                where = f"s3://{bucket}/{obj['Key']}"
                found[where] = obj["Key"] + "\n" + data.decode("utf-8", "replace")
                if obj["Key"].endswith(".zip"):
                    found[f"zip {where}"] = "\n".join(zip_texts(data))

    lambda_client = boto3.client(
        "lambda",
        endpoint_url=run.endpoint,
        region_name="us-east-1",
        aws_access_key_id="inspector",
        aws_secret_access_key="inspector-secret",
    )
    for layer in lambda_client.list_layers()["Layers"]:
        versions = lambda_client.list_layer_versions(LayerName=layer["LayerName"])
        found[f"layer {layer['LayerName']}"] = json.dumps(
            [layer, versions["LayerVersions"]], default=str
        )
    return found


def test_a_full_run_leaves_no_secret_anywhere(full_run: FullRun) -> None:
    full_run.assert_succeeded()
    # The credentials were needed: the dump server refused anything without them.
    assert full_run.dump_requests == ["/nixpkgs.json authorized=True"]

    found = everything_produced(full_run)
    haystack = "\n".join(found.values())
    # The search covered what it should: the event log, the layer zip, the recorded source.
    assert any(key.startswith("event log of") and value for key, value in found.items())
    assert any(key.startswith(f"zip s3://{full_run.bucket}/layers/") for key in found), sorted(
        found
    )
    assert any(key.startswith("layer ") for key in found)
    assert full_run.source_shown in haystack, "the redacted source is recorded somewhere"
    assert "ASSET_MATERIALIZATION" in haystack

    leaks = [
        f"{name} in {where}"
        for name, secret in SECRETS.items()
        for where, text in found.items()
        if secret in text
    ]
    assert leaks == [], leaks


def test_attribute_paths_never_become_file_names(full_run: FullRun, tmp_path: Path) -> None:
    full_run.assert_succeeded()
    named = [
        str(path)
        for path in [*full_run.workdir.rglob("*"), *Path(tempfile.gettempdir()).glob("*")]
        if "escape-attr" in path.name
    ]
    assert named == []
    s3 = s3_client(full_run.endpoint)
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=full_run.bucket)
        for obj in page.get("Contents", [])
    ]
    assert keys and not [key for key in keys if "escape-attr" in key]
    for key in keys:
        if key.endswith(".zip"):
            data = s3.get_object(Bucket=full_run.bucket, Key=key)["Body"].read()
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()
            assert not [n for n in names if "escape-attr" in n or ".." in n.split("/")]
            assert not [n for n in names if n.startswith("/")]

    # They are data: rows of the published datasets, verbatim.
    client = s3_client(full_run.endpoint)
    for prefix in ("snapshots/fdnix-data.lancedb", "snapshots/fdnix.lancedb"):
        snapshot = resolve_s3_dataset(f"s3://{full_run.bucket}/{prefix}", client)
        store = S3DatasetStore(client, full_run.bucket, prefix, Path(prefix).name)
        copy_path = store.checkout(snapshot, tmp_path / Path(prefix).name)
        paths = lancedb.connect(str(copy_path)).open_table("packages").to_arrow()["attr_path"]
        assert set(HOSTILE_ATTR_PATHS) <= set(paths.to_pylist())
        assert len(paths) == LEAK_CHECK_PACKAGES + len(HOSTILE_ATTR_PATHS)


# S3 keys and snapshot ids that would leave the target directory


@pytest.mark.parametrize(
    "relative",
    [
        "../escape",
        "a/../../escape",
        "/etc/escape",
        "//escape",
        "a\\..\\escape",
        "C:/escape",
        "c:escape",
        "a/./b",
        "a\x00b",
        ".",
        "..",
        "",
    ],
)
def test_keys_that_would_leave_the_target_are_refused(relative: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="would be written outside"):
        safe_relative_path(relative, f"prefix/{relative}", "bucket", tmp_path / "target")


def test_a_key_through_a_symlink_out_of_the_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(StorageError, match="would be written outside"):
        safe_relative_path("link/file", "prefix/link/file", "bucket", target)


@pytest.mark.parametrize(
    "snapshot_id", ["..", "../other", "a/b", "20260101T000000000000Z-x/../..", "", "x" * 300]
)
def test_snapshot_ids_are_checked_before_use(snapshot_id: str) -> None:
    with pytest.raises(StorageError):
        check_snapshot_id(snapshot_id, "s3://bucket/prefix/latest")


def test_a_pointer_naming_a_hostile_snapshot_id_is_refused(aws_env: str, s3_bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    pointer = {
        "format": "fdnix-snapshot-pointer/1",
        "dataset": "fdnix-data.lancedb",
        "snapshot_id": "../../../other-prefix",
        "uri": f"s3://{s3_bucket}/other-prefix",
        "manifest_key": "other-prefix/_fdnix_manifest.json",
        "manifest_sha256": "0" * 64,
        "file_count": 1,
        "total_bytes": 1,
        "created_at": "2026-11-25T00:00:00+00:00",
    }
    client.put_object(Bucket=s3_bucket, Key="data/latest", Body=json.dumps(pointer).encode())
    with pytest.raises(StorageError, match="snapshot"):
        resolve_s3_dataset(f"s3://{s3_bucket}/data", client)


# Configuration values validated before use


HOSTILE_SETTINGS = [
    ("ARTIFACTS_BUCKET", "../escape"),
    ("ARTIFACTS_BUCKET", "bucket/key"),
    ("ARTIFACTS_BUCKET", "Upper-Case"),
    ("ARTIFACTS_BUCKET", "b" * 64),
    ("ARTIFACTS_BUCKET", "xn--punycode"),
    ("ARTIFACTS_BUCKET", "10.0.0.1"),
    ("ARTIFACTS_BUCKET", "buck\net"),
    ("ARTIFACTS_BUCKET", "bucket;rm -rf /"),
    ("ARTIFACTS_BUCKET", "my bucket"),
    ("BEDROCK_INPUT_BUCKET", "a..b"),
    ("BEDROCK_OUTPUT_BUCKET", "-leading-hyphen"),
    ("LANCEDB_DATA_KEY", "../escape"),
    ("LANCEDB_DATA_KEY", "a/../../b"),
    ("LANCEDB_DATA_KEY", "a//b"),
    ("LANCEDB_DATA_KEY", "a\\b"),
    ("LANCEDB_DATA_KEY", "a\x00b"),
    ("LANCEDB_DATA_KEY", "k" * 600),
    ("LANCEDB_MINIFIED_KEY", "$(id)"),
    ("LANCEDB_MINIFIED_KEY", "snap shots"),
    ("LANCEDB_MINIFIED_KEY", "./x"),
    ("BEDROCK_ROLE_ARN", "arn:aws:iam::123:role/short-account"),
    ("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:user/not-a-role"),
    ("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:role/x\nInjected: header"),
    ("BEDROCK_ROLE_ARN", "*"),
    ("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:role/a b"),
    ("LAYER_ARN", "arn:aws:lambda:us-east-1:123456789012:layer:x:1;rm"),
    ("LAYER_ARN", "../layer"),
    ("LAYER_ARN", "layer name"),
    ("LAYER_ARN", "arn:aws:lambda:us-east-1:123456789012:function:not-a-layer"),
    ("LAYER_ARN", "l" * 141),
    ("AWS_REGION", "us-east-1; rm"),
    ("AWS_REGION", "../../etc"),
    ("NIXPKGS_JSON", "ftp://host/nixpkgs.json"),
    ("NIXPKGS_JSON", "javascript:alert(1)"),
    ("NIXPKGS_JSON", "s3://../key"),
    ("NIXPKGS_JSON", "s3://bucket/"),
    ("NIXPKGS_JSON", "http:///no-host"),
    ("NIXPKGS", "ftp://host/nixpkgs.tar.gz"),
    ("NIXPKGS", "file:///etc/passwd"),
    ("BEDROCK_BATCH_SIZE", "1; DROP TABLE"),
    ("BEDROCK_OUTPUT_DIMENSIONS", "-256"),
    ("PROCESSING_MODE", "metadata; rm -rf /"),
    ("PUBLISH_LAYER", "maybe"),
    ("FDNIX_CHANNELS", "../etc"),
    ("FDNIX_CHANNELS", "nixos/unstable"),
    ("FDNIX_CHANNELS", "nixos-unstable,.."),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE_SETTINGS)
def test_hostile_configuration_is_refused_naming_the_variable(name: str, value: str) -> None:
    environ = {name: value}
    if name == "BEDROCK_ROLE_ARN":
        environ["EMBEDDING_BACKEND"] = "bedrock"
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    assert str(refused.value).startswith(name), str(refused.value)


# The Lambda handler: every parameter is hostile


QUOTED_LICENSE = "LicenseRef-O'Reilly"
FILTER_PACKAGES = ["ripgrep", "fd", "bat", "oreilly-tool", "hello"]


@pytest.fixture(scope="module")
def hostile_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small minified dataset; one package's license id holds a single quote."""
    base = tmp_path_factory.mktemp("hostile-dataset")
    entries = [
        search_support.package(name, f"{name} does useful things") for name in FILTER_PACKAGES
    ]
    oreilly = dict(entries[3][1])
    oreilly["meta"] = dict(oreilly["meta"]) | {  # type: ignore[arg-type]
        "license": {"spdxId": QUOTED_LICENSE, "shortName": "oreilly", "free": True}
    }
    entries[3] = (entries[3][0], oreilly)
    vectors = {name: search_support.unit(index) for index, name in enumerate(FILTER_PACKAGES)}
    return search_support.listing_dataset(base, "hostile", entries, vectors)


@pytest.fixture
def lambda_dataset(hostile_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FDNIX_DATASET_PATH", str(hostile_dataset))
    monkeypatch.setattr(lambda_handler, "_engine", None)
    return hostile_dataset


def call(params: dict[str, str | list[str]]) -> tuple[int, Any]:
    multi = {name: value if isinstance(value, list) else [value] for name, value in params.items()}
    event = {
        "httpMethod": "GET",
        "multiValueQueryStringParameters": multi,
        "queryStringParameters": {name: values[-1] for name, values in multi.items()},
    }
    response = handler(event, None)
    return response["statusCode"], decode_body(response)


INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|/work/|/tmp/|lancedb|datafusion|pyarrow|Error\(|0x[0-9a-f]{6,}",
    re.IGNORECASE,
)

HOSTILE_QUERIES = [
    "' OR 1=1 --",
    "'; DROP TABLE packages; --",
    "attr_path = 'ripgrep' OR true",
    "broken IS NULL) OR (1=1",
    "description LIKE '%'",
    "title:ripgrep",
    '"unterminated phrase',
    "ripgrep AND NOT fd OR (bat",
    "rip* ~2 +fd -bat ^3",
    "\\",
    "%_%",
    "{}[]<>|&;$`",
    "rip\x00grep",
    "\u202eprgpir",
    "e\u0301" * 90,
    "\U0001f600" * 150,
    "\u200b" * 50 + "ripgrep",
]

BAD_PARAMETERS: list[tuple[dict[str, str | list[str]], str]] = [
    ({"q": "x" * 201}, "the limit is 200"),
    ({"q": "\U0001f600" * 201}, "the limit is 200"),
    ({"q": "a" * 100_000}, "longer than 512"),
    ({"q": "\u200b" * 30}, "empty"),
    ({"q": "\x00\x01\x02"}, "empty"),
    ({"q": "fd", "limit": "-1"}, "limit must be a whole number"),
    ({"q": "fd", "limit": "0x10"}, "limit must be a whole number"),
    ({"q": "fd", "limit": "\uff11\uff10"}, "limit must be a whole number"),
    ({"q": "fd", "limit": "10.0"}, "limit must be a whole number"),
    ({"q": "fd", "limit": "9" * 40}, "limit must be a whole number"),
    ({"q": "fd", "limit": "1000"}, "limit must be between 1 and 100"),
    ({"q": "fd", "limit": ["1", "2"]}, "limit may be given once"),
    ({"q": "fd", "offset": "1e3"}, "offset must be a whole number"),
    ({"q": "fd", "license": f"{QUOTED_LICENSE}') OR true --"}, "unknown license"),
    ({"q": "fd", "license": "MIT\x00' OR '1'='1"}, "unknown license"),
    ({"q": "fd", "license": ",".join(["MIT"] * 40)}, "licenses may be given"),
    ({"q": "fd", "platform": "x86_64-linux') OR (1=1"}, "unknown platform"),
    ({"q": "fd", "platform": "x86_64-linux\x00"}, "unknown platform"),
    ({"q": "fd", "broken": "exclude' OR 1=1 --"}, "must be include, exclude or only"),
    ({"q": "fd", "where": "1=1"}, "unknown parameter 'where'"),
    ({"q": "fd", "__proto__": "x"}, "unknown parameter"),
]


@pytest.mark.usefixtures("lambda_dataset")
@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_hostile_query_text_is_only_ever_search_text(query: str) -> None:
    status, body = call({"q": query, "limit": "5"})
    assert status == 200, body
    assert isinstance(body["results"], list) and len(body["results"]) <= 5
    assert {result["attr_path"] for result in body["results"]} <= set(FILTER_PACKAGES)
    assert lambda_handler.engine().table.count_rows() == len(FILTER_PACKAGES)


@pytest.mark.usefixtures("lambda_dataset")
@pytest.mark.parametrize(("params", "message"), BAD_PARAMETERS)
def test_bad_parameters_get_400_with_a_message_and_no_internals(
    params: dict[str, str | list[str]], message: str
) -> None:
    status, body = call(params)
    assert status == 400, body
    assert set(body) == {"error"}
    assert message in body["error"], body
    assert not INTERNALS.search(body["error"]), body
    assert len(body["error"]) < 400


@pytest.mark.usefixtures("lambda_dataset")
def test_a_license_with_a_quote_is_escaped_not_executed() -> None:
    status, body = call({"q": "useful things", "license": QUOTED_LICENSE, "limit": "10"})
    assert status == 200, body
    assert [result["attr_path"] for result in body["results"]] == ["oreilly-tool"]
    status, body = call({"q": "useful things", "license": "MIT", "limit": "10"})
    assert status == 200
    assert {r["attr_path"] for r in body["results"]} == set(FILTER_PACKAGES) - {"oreilly-tool"}


def test_sql_literals_hold_any_value_inside_lancedb(tmp_path: Path) -> None:
    """``sql_string`` keeps every value inside its literal when LanceDB (DataFusion) parses it."""
    values = [QUOTED_LICENSE, "a' OR '1'='1", "x'); DROP TABLE t; --", "'", "''", "\\'", "%"]
    table = lancedb.connect(str(tmp_path)).create_table(
        "t",
        pa.table(
            {
                "id": list(range(len(values))),
                "licenses": [[value] for value in values],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.zeros(len(values) * 2, dtype=np.float32)), 2
                ),
            }
        ),
    )
    for index, value in enumerate(values):
        where = f"array_has_any(licenses, [{sql_string(value)}])"
        matched = table.search().where(where).select(["id"]).to_arrow()["id"].to_pylist()
        assert matched == [index], (value, matched)
    with pytest.raises(InvalidQuery, match="NUL"):
        sql_string("a\x00b")


# Root is never needed


def test_the_metadata_job_runs_as_an_unprivileged_user_with_the_real_nix_env() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root; this already is an unprivileged user")
    nobody = 65534
    workdir = Path(tempfile.mkdtemp(prefix="fdnix-unprivileged-"))
    try:
        os.chown(workdir, nobody, nobody)
        env = clean_environment()
        env |= {
            "PROCESSING_MODE": "metadata",
            "NIXPKGS": str(TEST_NIXPKGS),
            "OUTPUT_PATH": str(workdir / "out" / "fdnix-data.lancedb"),
            "OUTPUT_MINIFIED_PATH": str(workdir / "out" / "fdnix.lancedb"),
            "HOME": str(workdir / "home"),
            "TMPDIR": str(workdir),
            "XDG_CACHE_HOME": str(workdir / "cache"),
        }
        as_nobody = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
        completed = run_entrypoint(as_nobody, env, workdir)
        assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
        table = lancedb.connect(str(workdir / "out" / "fdnix-data.lancedb")).open_table("packages")
        assert table.count_rows() == 19
        owners = {path.stat().st_uid for path in workdir.rglob("*") if not path.is_symlink()}
        assert owners == {nobody}, "something was written as another user"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Dependencies: the lock file is what CI installs and what the tests run on


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_ci_installs_from_the_lock_file() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^scripts/setup\.sh\b", ci, re.MULTILINE), ".ci/run does not run setup.sh"
    assert ".venv/bin/pytest" in ci
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "requirements.lock" in setup
    pip_lines = [line for line in setup.splitlines() if '"${pip[@]}"' in line]
    assert pip_lines, "setup.sh installs nothing with pip"
    for line in pip_lines:
        # Every pip install is the lock, the project without dependencies, or an exact pin
        # the lock agrees with.
        if "-r " in line or "--no-deps -e ." in line:
            continue
        pinned = re.findall(r'"([A-Za-z0-9_.-]+)==([^"\s]+)"', line)
        assert pinned, f"setup.sh installs something unpinned: {line.strip()}"
        for name, version in pinned:
            assert lock_pins()[name.lower()] == version, line


def test_the_environment_is_exactly_the_lock() -> None:
    import importlib.metadata

    pins = lock_pins()
    installed = {
        re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist.version
        for dist in importlib.metadata.distributions()
    }
    unpinned = sorted(set(installed) - set(pins) - {"pip", "fdnix-assets"})
    assert unpinned == [], f"installed but not in requirements.lock: {unpinned}"
    # A local version label (torch's +cpu) is the same release.
    different = {
        name: (installed[name], pins[name])
        for name in set(installed) & set(pins)
        if installed[name].split("+")[0] != pins[name]
    }
    assert different == {}, different
