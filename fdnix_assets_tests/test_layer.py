"""The Lambda layer: a deterministic zip, publishing through moto's S3 and Lambda over HTTP,
idempotent reruns, retention, size refusals, and the asset's skip and failure paths."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from dagster import (
    AssetCheckKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
)
from dagster_aws.s3 import S3Resource

from fdnix_assets import lambda_handler
from fdnix_assets.assets.layer import LAYER_ASSET, LAYER_SIZE_CHECK, LambdaLayerPublisher
from fdnix_assets.datasets import write_packages
from fdnix_assets.definitions import build_definitions
from fdnix_assets.embedding.text import embedding_text
from fdnix_assets.layer import (
    HANDLER,
    LAYER_DATASET_DIR,
    LAYER_PACKAGE_DIR,
    PACKAGE_STUB,
    RUNTIME_DATASET_PATH,
    LayerError,
    LayerTarget,
    LayerTooLargeError,
    PublishRequest,
    SizeBudget,
    build_layer_zip,
    ensure_outside_dataset_prefixes,
    expected_etag,
    layer_zip_key,
    list_layer_versions,
    parse_layer_target,
    publish_layer_zip,
    upload_layer_zip,
)
from fdnix_assets.minify import MinifyOptions, build_minified
from fdnix_assets.normalize import normalize_listing
from fdnix_assets.resources import DatasetStorage
from fdnix_assets.schema import vector_type
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID, load_settings
from fdnix_assets_tests.conftest import SAMPLE_LISTING, run_selection
from fdnix_assets_tests.samples import local_model_provenance

SNAPSHOT_ID = "20261125T000000000000Z-test"


def make_dataset(root: Path, marker: str, rows: int = 50) -> Path:
    """A real LanceDB database with a ``packages`` table whose rows say which version it is."""
    table = pa.table(
        {
            "attr_path": [f"pkg{index}" for index in range(rows)],
            "description": [f"{marker} package number {index}" for index in range(rows)],
        }
    )
    lancedb.connect(str(root)).create_table("packages", data=table)
    return root


def make_code(root: Path, modules: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in modules.items():
        (root / name).write_text(text)
    return root


TINY_CODE = {
    "search.py": "import json\n\ndef search(q):\n    return json.dumps([q])\n",
    "lambda_handler.py": "from fdnix_assets.search import search\n\n"
    "def handler(event, context):\n    return search(event)\n",
}
TINY_MODULES = ("search.py", "lambda_handler.py")


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    return make_code(tmp_path / "code", TINY_CODE)


def build(dataset: Path, code: Path, target: Path) -> object:
    return build_layer_zip(dataset, code, target, modules=TINY_MODULES)


def test_zip_is_deterministic_and_laid_out_for_opt(tmp_path: Path, code_dir: Path) -> None:
    dataset = make_dataset(tmp_path / "fdnix.lancedb", "v1")
    first = build(dataset, code_dir, tmp_path / "work1" / "layer.zip")

    # The same files copied elsewhere with other timestamps and modes give the same bytes.
    copy = tmp_path / "elsewhere" / "fdnix.lancedb"
    shutil.copytree(dataset, copy)
    for path in copy.rglob("*"):
        if path.is_file():
            os.utime(path, (1_800_000_000, 1_800_000_000))
            path.chmod(0o600)
    second = build(copy, code_dir, tmp_path / "work2" / "layer.zip")

    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()

    with zipfile.ZipFile(first.path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        assert names == sorted(names)
        assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {info.external_attr >> 16 for info in infos} == {0o100644}
        assert {info.extra for info in infos} == {b""}
        assert archive.read(f"{LAYER_PACKAGE_DIR}/__init__.py") == PACKAGE_STUB
        assert archive.read(f"{LAYER_PACKAGE_DIR}/search.py").decode() == TINY_CODE["search.py"]
        dataset_names = {n for n in names if n.startswith(LAYER_DATASET_DIR + "/")}
        expected = {
            f"{LAYER_DATASET_DIR}/{p.relative_to(dataset).as_posix()}"
            for p in dataset.rglob("*")
            if p.is_file()
        }
        assert dataset_names == expected
        assert sum(info.file_size for info in infos) == first.unzipped_bytes
    assert first.file_count == len(names)

    # Different data, different zip.
    other = build(make_dataset(tmp_path / "v2" / "fdnix.lancedb", "v2"), code_dir, tmp_path / "z")
    assert other.sha256 != first.sha256


def test_zip_refuses_bad_inputs(tmp_path: Path, code_dir: Path) -> None:
    dataset = make_dataset(tmp_path / "fdnix.lancedb", "v1")
    with pytest.raises(LayerError, match="inside the dataset"):
        build(dataset, code_dir, dataset / "layer.zip")
    with pytest.raises(LayerError, match="is not a directory"):
        build(tmp_path / "missing", code_dir, tmp_path / "a.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayerError, match="no LanceDB table"):
        build(tmp_path / "empty", code_dir, tmp_path / "a.zip")
    missing_sibling = make_code(
        tmp_path / "code2",
        TINY_CODE | {"search.py": "from fdnix_assets.datasets import open_packages\n"},
    )
    with pytest.raises(LayerError, match=r"search\.py imports fdnix_assets\.datasets"):
        build(dataset, missing_sibling, tmp_path / "b.zip")
    relative = make_code(tmp_path / "code3", TINY_CODE | {"search.py": "from . import settings\n"})
    with pytest.raises(LayerError, match=r"imports fdnix_assets\.settings"):
        build(dataset, relative, tmp_path / "c.zip")


def test_layer_path_is_where_the_handler_looks() -> None:
    assert RUNTIME_DATASET_PATH == "/opt/" + LAYER_DATASET_DIR
    assert lambda_handler.DEFAULT_DATASET_PATH == RUNTIME_DATASET_PATH
    assert f"{lambda_handler.__name__}.{lambda_handler.handler.__name__}" == HANDLER


def test_layer_target_from_layer_arn() -> None:
    target = parse_layer_target("arn:aws:lambda:eu-west-1:123456789012:layer:fdnix-data:7")
    assert target == LayerTarget(
        name="fdnix-data",
        arn="arn:aws:lambda:eu-west-1:123456789012:layer:fdnix-data",
        region="eu-west-1",
    )
    assert parse_layer_target("fdnix-data") == LayerTarget(name="fdnix-data")
    with pytest.raises(LayerError, match="LAYER_ARN is not set"):
        parse_layer_target(None)
    with pytest.raises(LayerError, match=r"LAYER_ARN='arn:aws:s3:::bucket' is not"):
        parse_layer_target("arn:aws:s3:::bucket")


def test_zip_keys_stay_outside_dataset_prefixes() -> None:
    key = layer_zip_key("layers/", "fdnix", "ab" * 32)
    assert key == f"layers/fdnix/{'ab' * 32}.zip"
    ensure_outside_dataset_prefixes(key, ["snapshots/fdnix.lancedb", "snapshots/fdnix-data"])
    with pytest.raises(LayerError, match=r"inside the dataset prefix 'snapshots/fdnix\.lancedb'"):
        ensure_outside_dataset_prefixes(
            "snapshots/fdnix.lancedb/fdnix/x.zip", ["snapshots/fdnix.lancedb/"]
        )


def clients(endpoint: str) -> tuple[object, object]:
    return (
        boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1"),
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"),
    )


def request_for(bucket: str | None, layer_name: str, **overrides: object) -> PublishRequest:
    return PublishRequest(
        target=LayerTarget(name=layer_name),
        dataset="fdnix.lancedb",
        snapshot_id=SNAPSHOT_ID,
        artifacts_bucket=bucket,
        dataset_prefixes=("snapshots/fdnix.lancedb", "snapshots/fdnix-data.lancedb"),
        **overrides,  # type: ignore[arg-type]
    )


def test_publish_then_rerun_publishes_nothing(
    tmp_path: Path, code_dir: Path, aws_env: str, s3_bucket: str
) -> None:
    lambda_client, s3 = clients(aws_env)
    name = f"fdnix-{uuid.uuid4().hex[:8]}"
    layer = build(make_dataset(tmp_path / "fdnix.lancedb", "v1"), code_dir, tmp_path / "l.zip")

    outcome = publish_layer_zip(lambda_client, s3, layer, request_for(s3_bucket, name))
    assert outcome.published
    assert outcome.version.version == 1
    assert outcome.upload is not None and not outcome.upload.reused
    assert outcome.upload.key == f"layers/{name}/{layer.sha256}.zip"
    stored = s3.get_object(Bucket=s3_bucket, Key=outcome.upload.key)["Body"].read()
    assert stored == layer.path.read_bytes()

    described = lambda_client.get_layer_version(LayerName=name, VersionNumber=1)
    assert (
        described["Content"]["CodeSha256"]
        == base64.b64encode(hashlib.sha256(stored).digest()).decode()
    )
    assert described["Content"]["CodeSize"] == layer.zip_bytes
    assert described["Description"] == f"fdnix fdnix.lancedb snapshot {SNAPSHOT_ID} " + (
        f"sha256:{layer.sha256}"
    )
    assert described["CompatibleRuntimes"] == ["python3.11", "python3.12", "python3.13"]
    assert described["CompatibleArchitectures"] == ["x86_64", "arm64"]

    rebuilt = build(tmp_path / "fdnix.lancedb", code_dir, tmp_path / "again.zip")
    rerun = publish_layer_zip(lambda_client, s3, rebuilt, request_for(s3_bucket, name))
    assert not rerun.published
    assert rerun.version.arn == outcome.version.arn
    assert [v.version for v in list_layer_versions(lambda_client, name)] == [1]
    assert rerun.as_metadata()["layer_version"] == 1


def test_retention_keeps_the_newest_versions_and_their_zips(
    tmp_path: Path, code_dir: Path, aws_env: str, s3_bucket: str
) -> None:
    lambda_client, s3 = clients(aws_env)
    name = f"fdnix-{uuid.uuid4().hex[:8]}"
    shas = []
    for index in range(7):
        dataset = make_dataset(tmp_path / f"d{index}" / "fdnix.lancedb", f"v{index}", rows=5)
        layer = build(dataset, code_dir, tmp_path / f"w{index}" / "l.zip")
        outcome = publish_layer_zip(lambda_client, s3, layer, request_for(s3_bucket, name))
        assert outcome.published and outcome.version.version == index + 1
        shas.append(layer.sha256)
    assert outcome.deleted_versions == [2]
    remaining = list_layer_versions(lambda_client, name)
    assert [v.version for v in remaining] == [7, 6, 5, 4, 3]
    assert [v.sha256 for v in remaining] == shas[:1:-1]
    keys = {
        item["Key"]
        for item in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"layers/{name}/")["Contents"]
    }
    assert keys == {f"layers/{name}/{sha}.zip" for sha in shas[2:]}


def test_too_large_layers_are_refused_before_upload(
    tmp_path: Path, code_dir: Path, aws_env: str, s3_bucket: str
) -> None:
    lambda_client, s3 = clients(aws_env)
    name = f"fdnix-{uuid.uuid4().hex[:8]}"
    layer = build(make_dataset(tmp_path / "fdnix.lancedb", "v1"), code_dir, tmp_path / "l.zip")

    tight = SizeBudget(
        unzipped_limit_bytes=layer.unzipped_bytes + 1000, reserved_unzipped_bytes=1001
    )
    with pytest.raises(LayerTooLargeError, match=r"reserved for the function's package") as error:
        publish_layer_zip(lambda_client, s3, layer, request_for(s3_bucket, name, budget=tight))
    assert f"{layer.unzipped_bytes / 1_048_576:.1f} MiB" in str(error.value)

    inline = SizeBudget(direct_upload_limit_bytes=layer.zip_bytes - 1)
    with pytest.raises(LayerTooLargeError, match="set ARTIFACTS_BUCKET"):
        publish_layer_zip(lambda_client, None, layer, request_for(None, name, budget=inline))

    assert "Contents" not in s3.list_objects_v2(Bucket=s3_bucket)
    assert list_layer_versions(lambda_client, name) == []

    # Exactly at the limit is fine, and without a bucket a small zip goes inline.
    exact = SizeBudget(
        unzipped_limit_bytes=layer.unzipped_bytes + 10,
        reserved_unzipped_bytes=10,
        direct_upload_limit_bytes=layer.zip_bytes,
    )
    outcome = publish_layer_zip(lambda_client, None, layer, request_for(None, name, budget=exact))
    assert outcome.published and outcome.upload is None
    assert outcome.version.sha256 == layer.sha256


def test_upload_is_verified_and_replaces_a_damaged_object(
    tmp_path: Path, code_dir: Path, aws_env: str, s3_bucket: str
) -> None:
    _, s3 = clients(aws_env)
    dataset = make_dataset(tmp_path / "fdnix.lancedb", "v1")
    # Incompressible data, so the zip spans several 5 MiB parts of a multipart upload.
    (dataset / "packages.lance" / "noise.bin").write_bytes(os.urandom(11 * 1024 * 1024))
    layer = build(dataset, code_dir, tmp_path / "l.zip")
    part = 5 * 1024 * 1024
    assert expected_etag(layer.path, part).endswith("-3")

    key = f"layers/damaged/{layer.sha256}.zip"
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"not the zip", Metadata={"sha256": layer.sha256})
    first = upload_layer_zip(s3, layer, s3_bucket, key, part_bytes=part)
    assert not first.reused
    head = s3.head_object(Bucket=s3_bucket, Key=key)
    assert head["ETag"].strip('"') == first.etag == expected_etag(layer.path, part)
    assert head["ContentLength"] == layer.zip_bytes

    second = upload_layer_zip(s3, layer, s3_bucket, key, part_bytes=part)
    assert second.reused


def layer_definitions(
    tmp_path: Path, environ: dict[str, str], dataset: Path | None = None
) -> Definitions:
    """The definitions these variables give, with a minified snapshot already published."""
    settings = load_settings(
        {
            "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
            "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
        }
        | environ
    )
    definitions = build_definitions(settings)
    storage = definitions.resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage)
    staged = tmp_path / "staged" / "fdnix.lancedb"
    if dataset is None:
        make_dataset(staged, "v1")
    else:
        shutil.copytree(dataset, staged)
    storage.store("minified").publish(staged, SNAPSHOT_ID)
    return definitions


def run_layer_asset(definitions: Definitions) -> tuple[ExecuteInProcessResult, DagsterInstance]:
    """Materializes lambda_layer_version alone, reading the published minified snapshot."""
    instance = DagsterInstance.ephemeral()
    result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[LAYER_ASSET], instance=instance, raise_on_error=False
    )
    return result, instance


def step_failure(result: ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    data = failures[0].step_failure_data
    assert data is not None and data.user_failure_data is not None
    return data.user_failure_data.description or ""


@pytest.mark.parametrize("value", ["", "No"])
def test_asset_is_skipped_not_failed_when_publish_layer_is_off(
    tmp_path: Path, aws_env: str, value: str
) -> None:
    definitions = layer_definitions(tmp_path, {"PUBLISH_LAYER": value, "LAYER_ARN": "fdnix"})
    result, instance = run_layer_asset(definitions)
    assert result.success
    assert result.get_asset_materialization_events() == []
    assert result.get_asset_check_evaluations() == []
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("lambda_layer_version skipped: PUBLISH_LAYER is not true" in m for m in messages)
    assert list((tmp_path / "out").rglob("*.zip")) == []


@pytest.mark.parametrize("value", ["true", "YES"])
def test_publishing_without_layer_arn_fails_clearly(
    tmp_path: Path, aws_env: str, value: str
) -> None:
    definitions = layer_definitions(tmp_path, {"PUBLISH_LAYER": value})
    publisher = definitions.resources["layer_publisher"]
    assert isinstance(publisher, LambdaLayerPublisher) and publisher.enabled
    result, _ = run_layer_asset(definitions)
    assert not result.success
    assert "LAYER_ARN is not set" in step_failure(result)


def test_asset_refuses_a_layer_over_the_size_limit(tmp_path: Path, aws_env: str) -> None:
    environ = {"PUBLISH_LAYER": "true", "LAYER_ARN": "fdnix-small"}
    definitions = layer_definitions(tmp_path, environ)
    small_limit = LambdaLayerPublisher(
        enabled=True,
        layer_arn="fdnix-small",
        unzipped_limit_bytes=10_000,
        reserved_unzipped_bytes=0,
        s3=S3Resource(),
    )
    result, _ = run_layer_asset(
        Definitions(
            assets=definitions.assets,
            asset_checks=definitions.asset_checks,
            resources={**definitions.resources, "layer_publisher": small_limit},
        )
    )
    assert not result.success
    assert "refusing to publish fdnix-small" in step_failure(result)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == LAYER_SIZE_CHECK and not evaluation.passed
    assert evaluation.metadata["unzipped_limit_bytes"].value == 10_000
    lambda_client, _ = clients(aws_env)
    assert list_layer_versions(lambda_client, "fdnix-small") == []


def test_running_only_the_size_check_publishes_nothing(tmp_path: Path, aws_env: str) -> None:
    definitions = layer_definitions(tmp_path, {"PUBLISH_LAYER": "true", "LAYER_ARN": "fdnix-c"})
    selection = AssetSelection.checks(AssetCheckKey(LAYER_ASSET, LAYER_SIZE_CHECK))
    result = run_selection(definitions, selection, DagsterInstance.ephemeral())
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    assert evaluation.metadata["headroom_bytes"].value > 0
    assert result.get_asset_materialization_events() == []
    lambda_client, _ = clients(aws_env)
    assert list_layer_versions(lambda_client, "fdnix-c") == []


E2E_PACKAGES = 300


@pytest.fixture(scope="module")
def sample_minified(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first packages of the 2k sample, embedded with MiniLM and minified by the
    pipeline's own code (enough rows for the IVF-PQ index, few enough to embed quickly)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fdnix_assets.embedding.local import LocalEmbedder

    base = tmp_path_factory.mktemp("layer-e2e")
    packages = json.loads(SAMPLE_LISTING.read_bytes())
    subset = dict(list(packages.items())[:E2E_PACKAGES])
    table = normalize_listing(
        json.dumps(subset).encode(), model_id=LOCAL_MODEL_ID, dimensions=LOCAL_MODEL_DIMENSIONS
    ).table
    columns = ("attr_path", "main_program", "description", "long_description")
    texts = [
        embedding_text(*row)
        for row in zip(*(table[column].to_pylist() for column in columns), strict=True)
    ]
    vectors = LocalEmbedder().embed(texts).vectors.astype(np.float32)
    array = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), LOCAL_MODEL_DIMENSIONS)
    table = table.set_column(
        table.schema.get_field_index("vector"),
        pa.field("vector", vector_type(LOCAL_MODEL_DIMENSIONS)),
        array,
    )
    main = base / "fdnix-data.lancedb"
    provenance = local_model_provenance(str(SAMPLE_LISTING))
    write_packages(main, table, provenance)
    report = build_minified(str(main), base / "fdnix.lancedb", MinifyOptions())
    assert report.rows == E2E_PACKAGES and report.vectors == E2E_PACKAGES
    return base / "fdnix.lancedb"


def test_published_layer_serves_searches_from_an_opt_directory(
    tmp_path: Path, aws_env: str, s3_bucket: str, sample_minified: Path
) -> None:
    name = f"fdnix-{uuid.uuid4().hex[:8]}"
    layer_arn = f"arn:aws:lambda:us-east-1:123456789012:layer:{name}"
    environ = {"PUBLISH_LAYER": "true", "LAYER_ARN": layer_arn, "ARTIFACTS_BUCKET": s3_bucket}
    definitions = layer_definitions(tmp_path, environ, dataset=sample_minified)

    result, _ = run_layer_asset(definitions)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("lambda_layer_version")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["layer_version_arn"] == f"{layer_arn}:1"
    assert metadata["layer_version"] == 1 and metadata["published"] is True
    assert metadata["snapshot_id"] == SNAPSHOT_ID
    assert metadata["unzipped_bytes"] > metadata["zip_bytes"] > 0
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed

    # The snapshot came from S3 and the zip went to S3, outside the dataset's prefix.
    assert metadata["snapshot_uri"].startswith(f"s3://{s3_bucket}/snapshots/fdnix.lancedb/")
    sha = metadata["sha256"]
    assert metadata["zip_uri"] == f"s3://{s3_bucket}/layers/{name}/{sha}.zip"
    lambda_client, s3 = clients(aws_env)
    described = lambda_client.get_layer_version(LayerName=name, VersionNumber=1)
    assert SNAPSHOT_ID in described["Description"] and sha in described["Description"]
    # moto answers Content.Location with "s3://", so read the zip from S3 itself.
    zipped = s3.get_object(Bucket=s3_bucket, Key=f"layers/{name}/{sha}.zip")["Body"].read()
    assert hashlib.sha256(zipped).hexdigest() == sha
    assert base64.b64decode(described["Content"]["CodeSha256"]).hex() == sha

    # An unchanged dataset publishes nothing.
    again, _ = run_layer_asset(definitions)
    assert again.success
    (rerun,) = again.asset_materializations_for_node("lambda_layer_version")
    assert rerun.metadata["published"].value is False
    assert rerun.metadata["layer_version"].value == 1
    assert [v.version for v in list_layer_versions(lambda_client, name)] == [1]

    opt = tmp_path / "opt"
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        archive.extractall(opt)
    attr_path = (
        lancedb.connect(str(sample_minified))
        .open_table("packages")
        .search()
        .select(["attr_path"])
        .limit(50)
        .to_arrow()["attr_path"][37]
        .as_py()
    )
    answer = run_shipped_handler(
        opt,
        [
            {"queryStringParameters": {"q": attr_path, "limit": "5"}},
            {"queryStringParameters": {"limit": "5"}},
        ],
    )
    assert Path(answer["module_file"]) == opt / "python" / "fdnix_assets" / "__init__.py"
    found, bad = answer["responses"]
    assert found["statusCode"] == 200
    assert json.loads(found["body"])["results"][0]["attr_path"] == attr_path
    assert bad["statusCode"] == 400 and "q=" in json.loads(bad["body"])["error"]


SHIPPED_HANDLER_SCRIPT = """
import json, sys
import fdnix_assets
from fdnix_assets.lambda_handler import handler
responses = [handler(event, None) for event in json.loads(sys.argv[1])]
print(json.dumps({"module_file": fdnix_assets.__file__, "responses": responses}))
"""


def run_shipped_handler(opt: Path, events: list[dict[str, object]]) -> dict[str, Any]:
    """Calls the handler the way Lambda would: code from <opt>/python, data from the layer.

    ``-S`` skips site-packages processing, so the editable install of this checkout cannot
    shadow the shipped copy; the venv's site-packages stand in for the dependencies layer.
    """
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{opt / 'python'}{os.pathsep}{site_packages}",
        "FDNIX_DATASET_PATH": str(opt / LAYER_DATASET_DIR),
        "HF_HUB_OFFLINE": "1",
        "LANCEDB_LOG": "error",
    }
    completed = subprocess.run(
        [sys.executable, "-S", "-c", SHIPPED_HANDLER_SCRIPT, json.dumps(events)],
        cwd=opt,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
