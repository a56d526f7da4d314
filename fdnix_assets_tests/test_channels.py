"""Channels as static partitions: FDNIX_CHANNELS partitions every asset by nixpkgs channel,
each channel reads its own source and writes its own datasets, locally and on the moto S3;
the schedule runs every channel and the Bedrock sensor continues the channel it came from."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import lancedb
import pyarrow as pa
import pytest
import yaml
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    build_schedule_context,
    build_sensor_context,
)
from dagster._utils.tags import TagConcurrencyLimitsCounter

from fdnix_assets.assets.layer import LAYER_ASSET, LambdaLayerPublisher
from fdnix_assets.assets.metadata import ROW_COUNT_CHECK, UNIQUE_ATTR_PATH_CHECK
from fdnix_assets.channels import (
    DEFAULT_CHANNEL_NIXPKGS,
    ChannelError,
    channel_key,
    channel_layer_arn,
    channel_path,
    run_channel,
)
from fdnix_assets.cli import default_dataset
from fdnix_assets.datasets import open_packages
from fdnix_assets.definitions import build_definitions, build_resources
from fdnix_assets.layer import list_layer_versions
from fdnix_assets.resources import DatasetStorage, NixpkgsSource
from fdnix_assets.sensors import bedrock_batch_sensor
from fdnix_assets.settings import SettingsError, load_settings
from fdnix_assets_tests.bedrock_standin import BedrockStandIn
from fdnix_assets_tests.conftest import REPO_ROOT, TEST_NIXPKGS, run_selection
from fdnix_assets_tests.embedding_helpers import (
    FAST_POLL_SECONDS,
    ROLE_ARN,
    first_packages,
    make_buckets,
    sample_packages,
    write_listing,
)
from fdnix_assets_tests.samples import SMALL_LISTING_SIZE, write_small_listing

UNSTABLE = "nixos-unstable"
STABLE = "nixos-25.11"
CHANNELS = (UNSTABLE, STABLE)
TEST_SET_ROWS = 19
# A second Nix package set, different from the test set, for the other channel.
TINY_NIXPKGS = """
{ config ? { }, system ? builtins.currentSystem }:
let
  package = pname: description:
    derivation { name = "${pname}-1.0"; inherit system; builder = "/bin/sh"; }
    // { inherit pname; version = "1.0"; meta = { inherit description; license = "mit"; }; };
in
{
  tinyhello = package "tinyhello" "Says hello from the tiny channel";
  tinycat = package "tinycat" "Concatenates files in the tiny channel";
}
"""


def channel_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {
        "FDNIX_CHANNELS": ",".join(CHANNELS),
        "OUTPUT_PATH": str(tmp_path / "out" / "fdnix-data.lancedb"),
        "OUTPUT_MINIFIED_PATH": str(tmp_path / "out" / "fdnix.lancedb"),
    } | variables


def run_metadata(
    definitions: Definitions, instance: DagsterInstance, channel: str
) -> ExecuteInProcessResult:
    result = definitions.resolve_job_def("metadata_job").execute_in_process(
        instance=instance, partition_key=channel, raise_on_error=False
    )
    assert result.success, [event.message for event in result.all_events if event.is_failure]
    return result


def attr_paths_of(storage: DatasetStorage, channel: str) -> set[str]:
    snapshot = storage.for_channel(channel).store("main").require_latest()
    table = open_packages(snapshot)
    return set(table.search().select(["attr_path"]).limit(None).to_arrow()["attr_path"].to_pylist())


def checks_of(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def test_without_fdnix_channels_nothing_is_partitioned() -> None:
    definitions = build_definitions(load_settings({}))
    graph = definitions.resolve_asset_graph()
    assert {graph.get(key).partitions_def for key in graph.get_all_asset_keys()} == {None}
    assert definitions.resolve_job_def("full_job").partitions_def is None
    # One pool slot guards the single set of datasets.
    assert graph.get(AssetKey("nixpkgs_packages")).pools == {"fdnix_datasets"}

    schedule = definitions.resolve_schedule_def("full_job_schedule")
    with DagsterInstance.ephemeral() as instance:
        data = schedule.evaluate_tick(build_schedule_context(instance=instance))
    assert [request.partition_key for request in data.run_requests or []] == [None]


def test_with_channels_every_asset_and_job_is_partitioned_by_channel() -> None:
    settings = load_settings(
        {"FDNIX_CHANNELS": f" {UNSTABLE} , {STABLE} ", "LAYER_ARN": "fdnix-search"}
    )
    assert settings.channels == CHANNELS
    assert settings.nixpkgs == DEFAULT_CHANNEL_NIXPKGS
    definitions = build_definitions(settings)
    graph = definitions.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        partitions_def = graph.get(key).partitions_def
        assert partitions_def is not None, key
        assert partitions_def.get_partition_keys() == list(CHANNELS), key
    for job_name in ("full_job", "metadata_job", "embedding_job", "minified_job"):
        partitions_def = definitions.resolve_job_def(job_name).partitions_def
        assert partitions_def is not None and partitions_def.get_partition_keys() == list(CHANNELS)

    resources = definitions.resources
    source = resources["nixpkgs_source"]
    assert isinstance(source, NixpkgsSource)
    assert (
        source.for_channel(STABLE).description
        == "https://channels.nixos.org/nixos-25.11/nixexprs.tar.xz"
    )
    storage = resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage)
    stable = storage.for_channel(STABLE)
    assert stable.dataset_path("main") == Path("out/nixos-25.11/fdnix-data.lancedb")
    assert stable.dataset_path("minified") == Path("out/nixos-25.11/fdnix.lancedb")
    assert stable.key_prefix("main") == "snapshots/nixos-25.11/fdnix-data.lancedb"
    assert stable.key_prefix("minified") == "snapshots/nixos-25.11/fdnix.lancedb"
    publisher = resources["layer_publisher"]
    assert isinstance(publisher, LambdaLayerPublisher)
    assert publisher.for_channel(STABLE).target_layer_arn == "fdnix-search-nixos-25_11"
    assert publisher.for_channel(UNSTABLE).target_layer_arn == "fdnix-search-nixos-unstable"
    with pytest.raises(ChannelError, match="FDNIX_CHANNELS is set"):
        _ = storage.store("main")
    with pytest.raises(ChannelError, match=r"'nixos-24\.05' is not one of FDNIX_CHANNELS"):
        storage.for_channel("nixos-24.05")


def test_channel_paths_keys_and_layer_names() -> None:
    assert channel_path("out/fdnix.lancedb", STABLE) == Path("out/nixos-25.11/fdnix.lancedb")
    assert channel_path("/out/fdnix.lancedb", None) == Path("/out/fdnix.lancedb")
    assert channel_key("snapshots/fdnix.lancedb/", STABLE) == "snapshots/nixos-25.11/fdnix.lancedb"
    assert channel_key("fdnix.lancedb", STABLE) == "nixos-25.11/fdnix.lancedb"
    assert channel_key("a/b/fdnix.lancedb", None) == "a/b/fdnix.lancedb"
    arn = "arn:aws:lambda:us-east-1:123456789012:layer:fdnix"
    assert channel_layer_arn(f"{arn}:3", STABLE) == f"{arn}-nixos-25_11"
    assert channel_layer_arn("fdnix-{channel}-search", STABLE) == "fdnix-nixos-25_11-search"
    assert channel_layer_arn(arn, None) == arn
    assert run_channel({"dagster/partition": STABLE}, CHANNELS) == STABLE
    assert run_channel({}, CHANNELS) is None
    assert run_channel({"dagster/partition": STABLE}, ()) is None
    with pytest.raises(ChannelError, match="launch one run per channel"):
        run_channel(
            {
                "dagster/asset_partition_range_start": STABLE,
                "dagster/asset_partition_range_end": UNSTABLE,
            },
            CHANNELS,
        )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FDNIX_CHANNELS": "nixos unstable"}, r"FDNIX_CHANNELS='nixos unstable'.*channel name"),
        ({"FDNIX_CHANNELS": "../etc"}, r"FDNIX_CHANNELS='\.\./etc'"),
        ({"FDNIX_CHANNELS": "nixos-25..11"}, r"FDNIX_CHANNELS=.*cannot contain '\.\.'"),
        ({"FDNIX_CHANNELS": "a,,b"}, r"FDNIX_CHANNELS='a,,b'.*empty channel name"),
        ({"FDNIX_CHANNELS": "a,b,a"}, r"FDNIX_CHANNELS='a,b,a'.*listed twice"),
        ({"FDNIX_CHANNELS": "a/b"}, r"FDNIX_CHANNELS='a/b'"),
        ({"FDNIX_CHANNELS": "a,b", "FDNIX_CHANNEL": "c"}, r"FDNIX_CHANNEL='c' is not one of"),
        ({"FDNIX_CHANNEL": "a"}, r"FDNIX_CHANNEL='a' is set, but FDNIX_CHANNELS is not"),
        ({"NIXPKGS_JSON": "/dumps/{channel}.json"}, r"NIXPKGS_JSON=.*FDNIX_CHANNELS is not set"),
        ({"LAYER_ARN": "fdnix-{channel}"}, r"LAYER_ARN=.*FDNIX_CHANNELS is not set"),
        (
            {"FDNIX_CHANNELS": "a,b", "NIXPKGS_JSON": "/dumps/all.json"},
            r"NIXPKGS_JSON='/dumps/all.json' has no \{channel\} placeholder.*2 channels",
        ),
        (
            {"FDNIX_CHANNELS": "a,b", "NIXPKGS": "<nixpkgs>"},
            r"NIXPKGS='<nixpkgs>' has no \{channel\} placeholder",
        ),
        (
            {"FDNIX_CHANNELS": "a", "NIXPKGS_JSON": "ftp://dumps/{channel}.json"},
            r"NIXPKGS_JSON=.*unsupported scheme 'ftp'",
        ),
        (
            {"FDNIX_CHANNELS": "a", "LAYER_ARN": "arn:aws:lambda:us-east-1:12:layer:x"},
            r"LAYER_ARN=.*is not a Lambda layer ARN",
        ),
    ],
)
def test_bad_channel_settings_fail_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ)


def test_one_channel_may_read_a_source_without_a_placeholder() -> None:
    settings = load_settings({"FDNIX_CHANNELS": UNSTABLE, "NIXPKGS": "<nixpkgs>"})
    assert settings.channels == (UNSTABLE,) and settings.nixpkgs == "<nixpkgs>"


def test_two_channels_index_side_by_side_locally(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    write_small_listing(dumps).rename(dumps / f"{UNSTABLE}.json")
    # The stable channel is smaller: compared with the other channel it would look like an
    # 80% collapse, so its checks pass only if each channel has its own row history.
    stable_packages = dict(list(sample_packages().items())[1:41])
    write_listing(dumps / f"{STABLE}.json", stable_packages)
    env = channel_env(tmp_path, NIXPKGS_JSON=str(dumps / "{channel}.json"))
    definitions = build_definitions(load_settings(env))
    storage = definitions.resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage)
    out = tmp_path / "out"

    with DagsterInstance.ephemeral() as instance:
        for channel in CHANNELS:
            result = run_metadata(definitions, instance, channel)
            (materialization,) = result.asset_materializations_for_node("nixpkgs_packages")
            assert materialization.partition == channel
            assert materialization.metadata["source"].value == str(dumps / f"{channel}.json")
            checks = checks_of(result)
            assert checks[UNIQUE_ATTR_PATH_CHECK].passed
            assert checks[ROW_COUNT_CHECK].passed, checks[ROW_COUNT_CHECK].description
            assert checks[ROW_COUNT_CHECK].metadata["previous_rows"].value == -1

        unstable_paths = set(json.loads((dumps / f"{UNSTABLE}.json").read_text()))
        assert len(unstable_paths) == SMALL_LISTING_SIZE
        assert attr_paths_of(storage, UNSTABLE) == unstable_paths
        assert attr_paths_of(storage, STABLE) == set(stable_packages)
        assert (out / UNSTABLE / "fdnix-data.lancedb").is_symlink()
        assert (out / STABLE / "fdnix-data.lancedb").is_symlink()
        assert not (out / "fdnix-data.lancedb").exists()

        # Rebuilding one channel leaves the other's snapshot where it was, and its row
        # count is judged against its own previous run.
        stable_before = os.path.realpath(out / STABLE / "fdnix-data.lancedb")
        unstable_before = os.path.realpath(out / UNSTABLE / "fdnix-data.lancedb")
        again = run_metadata(definitions, instance, UNSTABLE)
        row_check = checks_of(again)[ROW_COUNT_CHECK]
        assert row_check.passed
        assert row_check.metadata["previous_rows"].value == SMALL_LISTING_SIZE
        assert os.path.realpath(out / UNSTABLE / "fdnix-data.lancedb") != unstable_before
        assert os.path.realpath(out / STABLE / "fdnix-data.lancedb") == stable_before
        assert attr_paths_of(storage, STABLE) == set(stable_packages)


def test_two_channels_from_two_nix_package_sets_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    sets = tmp_path / "nixpkgs-sets"
    sets.mkdir()
    (sets / UNSTABLE).symlink_to(TEST_NIXPKGS, target_is_directory=True)
    (sets / STABLE).mkdir()
    (sets / STABLE / "default.nix").write_text(TINY_NIXPKGS)
    env = channel_env(tmp_path, NIXPKGS=str(sets / "{channel}"), ARTIFACTS_BUCKET=s3_bucket)
    definitions = build_definitions(load_settings(env))
    storage = definitions.resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage)

    with DagsterInstance.ephemeral() as instance:
        for channel in CHANNELS:
            result = run_metadata(definitions, instance, channel)
            (materialization,) = result.asset_materializations_for_node("nixpkgs_packages")
            metadata = materialization.metadata
            assert metadata["source"].value == str(sets / channel)
            assert metadata["source_kind"].value == "nix-env"
            uri = metadata["snapshot_uri"].value
            assert uri.startswith(f"s3://{s3_bucket}/snapshots/{channel}/fdnix-data.lancedb/")

    unstable = attr_paths_of(storage, UNSTABLE)
    assert len(unstable) == TEST_SET_ROWS and "python313Packages.requests" in unstable
    assert attr_paths_of(storage, STABLE) == {"tinyhello", "tinycat"}
    keys = [
        item["Key"]
        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for item in page.get("Contents", [])
    ]
    prefixes = {key.split("/fdnix-data.lancedb/", 1)[0] for key in keys}
    assert prefixes == {f"snapshots/{UNSTABLE}", f"snapshots/{STABLE}"}, sorted(keys)[:10]


def test_a_check_run_without_a_channel_fails_naming_fdnix_channels(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for channel in CHANNELS:
        write_listing(dumps / f"{channel}.json", first_packages(10))
    definitions = build_definitions(
        load_settings(channel_env(tmp_path, NIXPKGS_JSON=str(dumps / "{channel}.json")))
    )
    selection = AssetSelection.checks(
        AssetCheckKey(AssetKey("nixpkgs_packages"), UNIQUE_ATTR_PATH_CHECK)
    )
    with DagsterInstance.ephemeral() as instance:
        run_metadata(definitions, instance, STABLE)
        result = run_selection(definitions, selection, instance)
    assert not result.success
    errors = " ".join(
        event.step_failure_data.error.to_string()
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error
    )
    assert "FDNIX_CHANNELS is set (nixos-unstable, nixos-25.11)" in errors
    assert "dagster/partition" in errors


def test_the_schedule_requests_one_full_job_run_per_channel() -> None:
    definitions = build_definitions(load_settings({"FDNIX_CHANNELS": ",".join(CHANNELS)}))
    schedule = definitions.resolve_schedule_def("full_job_schedule")
    assert schedule.job_name == "full_job"
    assert schedule.execution_timezone == "UTC"
    assert "once per channel (nixos-unstable, nixos-25.11)" in (schedule.description or "")

    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 11, 25, 3, tzinfo=UTC),
            repository_def=definitions.get_repository_def(),
        )
        data = schedule.evaluate_tick(context)
    requests = data.run_requests or []
    assert [request.partition_key for request in requests] == list(CHANNELS)
    assert [request.tags["fdnix/channel"] for request in requests] == list(CHANNELS)
    assert len({request.run_key for request in requests}) == len(CHANNELS)


def test_the_bedrock_sensor_continues_the_channel_it_came_from(
    tmp_path: Path, bedrock_standin: BedrockStandIn, aws_env: str
) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    write_listing(dumps / f"{UNSTABLE}.json", first_packages(30))
    write_listing(dumps / f"{STABLE}.json", first_packages(20))
    input_bucket, output_bucket = make_buckets(aws_env)
    env = channel_env(
        tmp_path,
        NIXPKGS_JSON=str(dumps / "{channel}.json"),
        EMBEDDING_BACKEND="bedrock",
        BEDROCK_ROLE_ARN=ROLE_ARN,
        BEDROCK_INPUT_BUCKET=input_bucket,
        BEDROCK_OUTPUT_BUCKET=output_bucket,
    )
    settings = load_settings(env)
    resources = build_resources(settings)
    backend = resources["embedding_backend"]
    resources["embedding_backend"] = backend.model_copy(
        update={"bedrock_poll_interval": FAST_POLL_SECONDS}
    )
    definitions = build_definitions(settings)
    definitions = Definitions(
        assets=definitions.assets,
        asset_checks=definitions.asset_checks,
        jobs=definitions.jobs,
        resources=resources,
    )
    storage = resources["dataset_storage"]

    with DagsterInstance.ephemeral() as instance:
        for channel in CHANNELS:
            run_metadata(definitions, instance, channel)
        # Below Bedrock's batch minimum: no batch job, the ingest embeds on demand.
        submitted = definitions.resolve_job_def("bedrock_submit_job").execute_in_process(
            instance=instance, partition_key=STABLE
        )
        assert submitted.success

        context = build_sensor_context(
            instance=instance, resources={"embedding_backend": resources["embedding_backend"]}
        )
        result = bedrock_batch_sensor(context)
        (request,) = result.run_requests
        assert request.partition_key == STABLE
        assert request.run_key.startswith(f"{STABLE}:")

        ingest = definitions.resolve_job_def("embedding_ingest_job").execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
            raise_on_error=False,
        )
        assert ingest.success
        (materialization,) = ingest.asset_materializations_for_node("package_embeddings")
        assert materialization.partition == STABLE
        assert materialization.metadata["texts_embedded"].value == 20
        assert materialization.metadata["dagster/row_count"].value == 20
        (minified,) = ingest.asset_materializations_for_node("minified_dataset")
        assert minified.partition == STABLE

    for channel, vectors in ((STABLE, 20), (UNSTABLE, 0)):
        snapshot = storage.for_channel(channel).store("main").require_latest()
        table = open_packages(snapshot)
        assert table.count_rows("vector IS NOT NULL") == vectors, channel
    assert storage.for_channel(STABLE).store("minified").latest() is not None
    assert storage.for_channel(UNSTABLE).store("minified").latest() is None


@pytest.mark.parametrize("instance_file", ["dagster.yaml", "docker/dagster.yaml"])
def test_the_instances_allow_one_run_per_channel_at_a_time(instance_file: str) -> None:
    config = yaml.safe_load((REPO_ROOT / instance_file).read_text(encoding="utf-8"))
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]

    class Run:
        def __init__(self, tags: dict[str, str]) -> None:
            self.tags = tags

    counter = TagConcurrencyLimitsCounter(limits, [Run({"dagster/partition": STABLE})])
    assert counter.is_blocked(Run({"dagster/partition": STABLE}))
    assert not counter.is_blocked(Run({"dagster/partition": UNSTABLE}))
    # Without channels a run has no partition tag; the datasets pool guards it instead.
    assert not counter.is_blocked(Run({}))


def test_each_channel_publishes_its_own_lambda_layer(tmp_path: Path, aws_env: str) -> None:
    name = f"fdnix-{uuid.uuid4().hex[:8]}"
    env = channel_env(tmp_path, NIXPKGS_JSON=str(tmp_path / "{channel}.json"), PUBLISH_LAYER="true")
    definitions = build_definitions(load_settings(env | {"LAYER_ARN": name}))
    storage = definitions.resources["dataset_storage"]
    assert isinstance(storage, DatasetStorage)
    staged = tmp_path / "staged" / "fdnix.lancedb"
    lancedb.connect(str(staged)).create_table(
        "packages", data=pa.table({"attr_path": ["hello"], "description": ["greets"]})
    )
    storage.for_channel(STABLE).store("minified").publish(staged, "20261125T000000000000Z-c")

    with DagsterInstance.ephemeral() as instance:
        result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[LAYER_ASSET], partition_key=STABLE, instance=instance
        )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("lambda_layer_version")
    assert materialization.partition == STABLE
    lambda_client = boto3.client("lambda", endpoint_url=aws_env, region_name="us-east-1")
    (version,) = list_layer_versions(lambda_client, f"{name}-nixos-25_11")
    assert version.version == 1
    assert "fdnix nixos-25.11/fdnix.lancedb snapshot 20261125T000000000000Z-c" in (
        version.description
    )
    assert list_layer_versions(lambda_client, name) == []
    assert list_layer_versions(lambda_client, f"{name}-nixos-unstable") == []


def test_fdnix_search_defaults_to_a_channels_minified_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FDNIX_CHANNELS", ",".join(CHANNELS))
    monkeypatch.setenv("NIXPKGS_JSON", str(tmp_path / "{channel}.json"))
    monkeypatch.setenv("OUTPUT_MINIFIED_PATH", str(tmp_path / "out" / "fdnix.lancedb"))
    monkeypatch.delenv("FDNIX_CHANNEL", raising=False)
    assert default_dataset() == str(tmp_path / "out" / UNSTABLE / "fdnix.lancedb")
    monkeypatch.setenv("FDNIX_CHANNEL", STABLE)
    assert default_dataset() == str(tmp_path / "out" / STABLE / "fdnix.lancedb")
