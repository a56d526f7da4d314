"""Everything Dagster loads: assets, checks, jobs, resources, all configured from one place."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dagster import AssetsDefinition, Definitions, EnvVar, StaticPartitionsDefinition
from dagster_aws.s3 import S3Resource

from fdnix_assets.assets.embeddings import (
    bedrock_embedding_jobs,
    package_embeddings,
    vector_coverage_check,
    vector_dimension_check,
)
from fdnix_assets.assets.layer import LambdaLayerPublisher, lambda_layer_version
from fdnix_assets.assets.metadata import (
    attr_path_unique_and_non_empty,
    nixpkgs_packages,
    row_count_not_collapsed,
)
from fdnix_assets.assets.minified import (
    SearchIndexSettings,
    minified_dataset,
    minified_size_check,
    minified_smoke_search_check,
)
from fdnix_assets.embedding.resource import EmbeddingBackend, VectorIndexSettings
from fdnix_assets.io_managers import DatasetIOManager
from fdnix_assets.jobs import (
    bedrock_submit_job,
    embedding_ingest_job,
    embedding_job,
    full_job,
    metadata_job,
    minified_job,
)
from fdnix_assets.nix.extract import redact_url
from fdnix_assets.resources import DatasetStorage, NixpkgsSource
from fdnix_assets.schedules import build_full_job_schedule, schedule_cron
from fdnix_assets.sensors import build_bedrock_batch_sensor
from fdnix_assets.settings import Settings, load_settings


def _secret_by_reference(name: str, value: str | None) -> str | None:
    """``EnvVar(name)`` for a URL with credentials or a query (a signed URL) that the
    environment holds as it is, else ``value``.

    Resource values become defaults in the job snapshot Dagster stores with every run (and
    shows in the UI); an EnvVar is recorded by name and read from the environment at run time.
    """
    if value is None or redact_url(value) == value or os.environ.get(name) != value:
        return value
    return EnvVar(name)


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources for one environment; every value comes from the validated settings."""
    s3 = S3Resource(region_name=settings.aws_region)
    channels = list(settings.channels)
    storage = DatasetStorage(
        channels=channels,
        output_path=str(settings.output_path),
        output_minified_path=str(settings.output_minified_path),
        artifacts_bucket=settings.artifacts_bucket,
        data_key=settings.lancedb_data_key,
        minified_key=settings.lancedb_minified_key,
        lancedb_path=str(settings.lancedb_path) if settings.lancedb_path else None,
        region=settings.aws_region,
        s3=s3,
    )
    return {
        "dataset_storage": storage,
        "dataset_io_manager": DatasetIOManager(storage=storage),
        "nixpkgs_source": NixpkgsSource(
            channels=channels,
            nixpkgs=_secret_by_reference("NIXPKGS", settings.nixpkgs),
            nixpkgs_json=_secret_by_reference("NIXPKGS_JSON", settings.nixpkgs_json),
            s3=s3,
        ),
        "embedding_backend": EmbeddingBackend(
            backend=settings.embedding_backend,
            bedrock_model_id=settings.bedrock_model_id,
            bedrock_output_dimensions=settings.bedrock_output_dimensions,
            bedrock_role_arn=settings.bedrock_role_arn,
            bedrock_input_bucket=settings.bedrock_input_bucket,
            bedrock_output_bucket=settings.bedrock_output_bucket,
            bedrock_batch_size=settings.bedrock_batch_size,
            bedrock_poll_interval=settings.bedrock_poll_interval,
            bedrock_max_wait_time=settings.bedrock_max_wait_time,
            region=settings.aws_region,
        ),
        "vector_index": VectorIndexSettings(
            partitions=settings.vector_index_partitions,
            sub_vectors=settings.vector_index_sub_vectors,
        ),
        "search_index": SearchIndexSettings(
            fts_stopwords=settings.fts_stopwords, fts_stemmer=settings.fts_stemmer
        ),
        "layer_publisher": LambdaLayerPublisher(
            channels=channels,
            enabled=settings.publish_layer,
            layer_arn=settings.layer_arn,
            region=settings.aws_region,
            artifacts_bucket=settings.artifacts_bucket,
            s3=s3,
        ),
    }


def build_channel_partitions_def(
    channels: Sequence[str],
) -> StaticPartitionsDefinition | None:
    """One partition per nixpkgs channel (FDNIX_CHANNELS); None when channels are not used."""
    return StaticPartitionsDefinition(list(channels)) if channels else None


def partition_by_channel(
    assets: Sequence[AssetsDefinition], partitions_def: StaticPartitionsDefinition | None
) -> list[AssetsDefinition]:
    """The assets, each partitioned by channel when channels are configured."""
    if partitions_def is None:
        return list(assets)
    return [
        asset.map_asset_specs(lambda spec: spec.replace_attributes(partitions_def=partitions_def))
        for asset in assets
    ]


def build_definitions(settings: Settings) -> Definitions:
    channel_partitions_def = build_channel_partitions_def(settings.channels)
    return Definitions(
        assets=partition_by_channel(
            [
                nixpkgs_packages,
                package_embeddings,
                bedrock_embedding_jobs,
                minified_dataset,
                lambda_layer_version,
            ],
            channel_partitions_def,
        ),
        asset_checks=[
            attr_path_unique_and_non_empty,
            row_count_not_collapsed,
            vector_coverage_check,
            vector_dimension_check,
            minified_smoke_search_check,
            minified_size_check,
        ],
        jobs=[
            metadata_job,
            full_job,
            embedding_job,
            bedrock_submit_job,
            embedding_ingest_job,
            minified_job,
        ],
        schedules=[build_full_job_schedule(schedule_cron(), settings.channels)],
        sensors=[build_bedrock_batch_sensor(settings.bedrock_poll_interval)],
        resources=build_resources(settings),
    )


defs = build_definitions(load_settings())
