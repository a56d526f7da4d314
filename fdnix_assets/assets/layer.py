"""The last phase: the minified dataset, published as an AWS Lambda layer version.

The asset is a one-asset ``multi_asset`` with ``can_subset=True`` because that is how Dagster
lets an asset *and its check* be optional outputs: with ``PUBLISH_LAYER`` off the step
succeeds, materializes nothing and logs why, so the run stays green and the asset shows as not
materialized in that run instead of failed. The size check is emitted by the asset itself so a
refusal is recorded as a failed check before the step fails; selecting only the check builds
the zip and judges its size without publishing anything.
"""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

import fdnix_assets
from fdnix_assets.channels import channel_layer_arn
from fdnix_assets.layer import (
    COMPATIBLE_ARCHITECTURES,
    COMPATIBLE_RUNTIMES,
    DEFAULT_KEEP_VERSIONS,
    DEFAULT_KEY_PREFIX,
    DEFAULT_RESERVED_UNZIPPED_BYTES,
    DIRECT_UPLOAD_LIMIT_BYTES,
    HANDLER,
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    RUNTIME_DATASET_PATH,
    SHIPPED_MODULES,
    LayerError,
    LayerTarget,
    LayerZip,
    PublishRequest,
    SizeBudget,
    build_layer_zip,
    installed_footprint_bytes,
    parse_layer_target,
    publish_layer_zip,
    third_party_imports,
)
from fdnix_assets.resources import ChannelScopedResource, DatasetStorage
from fdnix_assets.storage import Snapshot

LAYER_ASSET = AssetKey("lambda_layer_version")
LAYER_SIZE_CHECK = "layer_fits_lambda_limits"
CODE_DIR = Path(fdnix_assets.__file__).resolve().parent


class LambdaLayerPublisher(ChannelScopedResource):
    """Where and how the minified dataset is published as a Lambda layer.

    The Lambda client's endpoint comes from boto3's own ``AWS_ENDPOINT_URL_LAMBDA``. With
    channels (FDNIX_CHANNELS) each channel publishes its own layer (see
    :func:`~fdnix_assets.channels.channel_layer_arn`).
    """

    enabled: bool = Field(default=False, description="PUBLISH_LAYER: publish at all.")
    layer_arn: str | None = Field(
        default=None, description="LAYER_ARN: the layer's ARN (its region is used) or name."
    )
    region: str = Field(default="us-east-1", description="AWS_REGION, unless LAYER_ARN names one.")
    artifacts_bucket: str | None = Field(
        default=None, description="ARTIFACTS_BUCKET: the zip is uploaded here before publishing."
    )
    key_prefix: str = Field(
        default=DEFAULT_KEY_PREFIX,
        description="Zips go to <key_prefix>/<layer name>/<sha256>.zip, outside dataset prefixes.",
    )
    keep_versions: int = Field(
        default=DEFAULT_KEEP_VERSIONS, description="Layer versions kept; older ones are deleted."
    )
    reserved_unzipped_bytes: int = Field(
        default=DEFAULT_RESERVED_UNZIPPED_BYTES,
        description=(
            "Unzipped bytes the function's own package and its other layers (lancedb, pyarrow, "
            "numpy) take out of Lambda's 250 MB limit."
        ),
    )
    unzipped_limit_bytes: int = Field(default=LAMBDA_UNZIPPED_LIMIT_BYTES)
    direct_upload_limit_bytes: int = Field(default=DIRECT_UPLOAD_LIMIT_BYTES)
    compatible_runtimes: list[str] = Field(default=list(COMPATIBLE_RUNTIMES))
    compatible_architectures: list[str] = Field(default=list(COMPATIBLE_ARCHITECTURES))
    # Required: Dagster fills a nested resource's default_factory with None (1.13).
    s3: S3Resource = Field(description="Uploads the zip; boto3 reads AWS_ENDPOINT_URL_S3.")

    @property
    def target_layer_arn(self) -> str | None:
        """LAYER_ARN for the run's channel (LAYER_ARN itself without channels)."""
        return channel_layer_arn(self.layer_arn, self.channel)

    @property
    def budget(self) -> SizeBudget:
        return SizeBudget(
            unzipped_limit_bytes=self.unzipped_limit_bytes,
            reserved_unzipped_bytes=self.reserved_unzipped_bytes,
            direct_upload_limit_bytes=self.direct_upload_limit_bytes,
        )

    def lambda_client(self, target: LayerTarget) -> Any:
        return boto3.client("lambda", region_name=target.region or self.region)


def _local_dataset(snapshot: Snapshot, dataset_storage: DatasetStorage, work_dir: Path) -> Path:
    """A local directory holding the snapshot: the snapshot itself when it is on disk."""
    if snapshot.is_local:
        return Path(snapshot.uri)
    return dataset_storage.store("minified").checkout(snapshot, work_dir / "dataset")


def _size_metadata(layer: LayerZip, budget: SizeBudget) -> dict[str, Any]:
    dependencies = installed_footprint_bytes(third_party_imports(CODE_DIR, SHIPPED_MODULES))
    dependency_bytes = sum(dependencies.values())
    return {
        "zip_bytes": layer.zip_bytes,
        "unzipped_bytes": layer.unzipped_bytes,
        "unzipped_limit_bytes": budget.unzipped_limit_bytes,
        "reserved_unzipped_bytes": budget.reserved_unzipped_bytes,
        "headroom_bytes": budget.headroom_bytes(layer),
        "runtime_dependencies_installed_bytes": MetadataValue.json(dependencies),
        "layer_plus_installed_dependencies_bytes": layer.unzipped_bytes + dependency_bytes,
    }


@multi_asset(
    name="lambda_layer_version",
    specs=[
        AssetSpec(
            LAYER_ASSET,
            deps=["minified_dataset"],
            skippable=True,
            group_name="fdnix",
            kinds={"aws", "lambda"},
            owners=["team:fdnix"],
            description=(
                "The AWS Lambda layer version the search function serves from: the minified "
                f"dataset at {RUNTIME_DATASET_PATH} plus the search code under /opt/python "
                f"(handler {HANDLER}). Published only when PUBLISH_LAYER is true, to LAYER_ARN; "
                "an unchanged dataset publishes nothing, and only the newest versions are kept. "
                "lancedb, pyarrow and numpy come from the function's package or another layer."
            ),
        )
    ],
    ins={"minified_dataset": AssetIn("minified_dataset")},
    check_specs=[
        AssetCheckSpec(
            LAYER_SIZE_CHECK,
            asset=LAYER_ASSET,
            description=(
                "The layer, plus the room reserved for the function's package and other "
                "layers, fits Lambda's 250 MB unzipped limit, and a zip sent without S3 fits "
                "the 50 MB direct-upload limit. Judged before anything is uploaded."
            ),
        )
    ],
    can_subset=True,
)
def lambda_layer_version(
    context: AssetExecutionContext,
    minified_dataset: Snapshot,
    layer_publisher: LambdaLayerPublisher,
    dataset_storage: DatasetStorage,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    if not layer_publisher.enabled:
        context.log.info(
            "lambda_layer_version skipped: PUBLISH_LAYER is not true, so no layer is built or "
            "published. Set PUBLISH_LAYER=true and LAYER_ARN to publish."
        )
        return
    try:
        target = parse_layer_target(layer_publisher.target_layer_arn)
    except LayerError as error:
        raise Failure(description=str(error)) from None

    budget = layer_publisher.budget
    via_s3 = layer_publisher.artifacts_bucket is not None
    if via_s3 and target.region and target.region != layer_publisher.region:
        context.log.warning(
            f"LAYER_ARN is in {target.region} but ARTIFACTS_BUCKET is used from "
            f"{layer_publisher.region}: Lambda reads a layer zip only from its own region"
        )
    work_dir = dataset_storage.work_dir / context.run_id / "layer"
    started = time.perf_counter()
    try:
        dataset_dir = _local_dataset(minified_dataset, dataset_storage, work_dir)
        layer = build_layer_zip(dataset_dir, CODE_DIR, work_dir / f"{target.name}.zip")
        build_seconds = time.perf_counter() - started
        context.log.info(
            f"built {layer.path.name}: {layer.file_count} files, {layer.zip_bytes:,} bytes "
            f"zipped, {layer.unzipped_bytes:,} unzipped, sha256 {layer.sha256}, "
            f"in {build_seconds:.1f} s"
        )
        problems = budget.problems(layer, via_s3=via_s3)
        size_metadata = _size_metadata(layer, budget)
        if size_metadata["layer_plus_installed_dependencies_bytes"] > budget.unzipped_limit_bytes:
            context.log.warning(
                "the layer plus the installed size of its runtime dependencies "
                f"({size_metadata['layer_plus_installed_dependencies_bytes']:,} bytes) exceeds "
                "Lambda's unzipped limit: a zip-packaged function cannot hold both; ship the "
                "dependencies in a container image or trim them"
            )
        if AssetCheckKey(LAYER_ASSET, LAYER_SIZE_CHECK) in context.selected_asset_check_keys:
            yield AssetCheckResult(
                check_name=LAYER_SIZE_CHECK,
                asset_key=LAYER_ASSET,
                passed=not problems,
                severity=AssetCheckSeverity.ERROR,
                metadata=size_metadata | {"problems": MetadataValue.json(problems)},
            )
        if problems:
            raise Failure(
                description=f"refusing to publish {target.name}: " + "; ".join(problems),
                metadata={"zip_bytes": layer.zip_bytes, "unzipped_bytes": layer.unzipped_bytes},
            )
        if LAYER_ASSET not in context.selected_asset_keys:
            return

        publish_started = time.perf_counter()
        request = PublishRequest(
            target=target,
            dataset=(
                f"{dataset_storage.channel}/{minified_dataset.dataset}"
                if dataset_storage.channel
                else minified_dataset.dataset
            ),
            snapshot_id=minified_dataset.snapshot_id,
            artifacts_bucket=layer_publisher.artifacts_bucket,
            key_prefix=layer_publisher.key_prefix,
            dataset_prefixes=(
                dataset_storage.key_prefix("main"),
                dataset_storage.key_prefix("minified"),
            ),
            keep_versions=layer_publisher.keep_versions,
            budget=budget,
            runtimes=tuple(layer_publisher.compatible_runtimes),
            architectures=tuple(layer_publisher.compatible_architectures),
        )
        outcome = publish_layer_zip(
            layer_publisher.lambda_client(target),
            layer_publisher.s3.get_client() if via_s3 else None,
            layer,
            request,
            log=context.log.info,
        )
        yield MaterializeResult(
            asset_key=LAYER_ASSET,
            metadata=outcome.as_metadata()
            | {
                "layer_version_arn": MetadataValue.text(outcome.version.arn),
                "snapshot_id": minified_dataset.snapshot_id,
                "snapshot_uri": minified_dataset.uri,
                "handler": HANDLER,
                "dataset_path_at_runtime": RUNTIME_DATASET_PATH,
                "shipped_code": MetadataValue.json(list(layer.code_files)),
                "zips_deleted": len(outcome.deleted_zips),
                "build_seconds": round(build_seconds, 2),
                "publish_seconds": round(time.perf_counter() - publish_started, 2),
            },
        )
    except LayerError as error:
        raise Failure(description=str(error)) from None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
