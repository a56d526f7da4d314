"""load_settings: the contract's defaults, and a clear SettingsError for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdnix_assets.settings import (
    LOCAL_MODEL_DIMENSIONS,
    LOCAL_MODEL_ID,
    Settings,
    SettingsError,
    load_settings,
)

ROLE_ARN = "arn:aws:iam::123456789012:role/fdnix-bedrock-batch"


def test_defaults_of_the_contract() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.aws_region == "us-east-1"
    assert settings.processing_mode == "both"
    assert settings.job_name == "full_job"
    assert settings.nixpkgs == "<nixpkgs>"
    assert settings.nixpkgs_json is None
    assert settings.output_path == Path("out/fdnix-data.lancedb")
    assert settings.output_minified_path == Path("out/fdnix.lancedb")
    assert settings.work_dir == Path("out/.fdnix-work")
    assert settings.artifacts_bucket is None and not settings.uses_s3
    assert settings.lancedb_data_key == "snapshots/fdnix-data.lancedb"
    assert settings.lancedb_minified_key == "snapshots/fdnix.lancedb"
    assert settings.embedding_backend == "local"
    assert settings.embedding_model_id == LOCAL_MODEL_ID
    assert settings.embedding_dimensions == LOCAL_MODEL_DIMENSIONS == 384
    assert settings.bedrock_model_id == "amazon.titan-embed-text-v2:0"
    assert settings.bedrock_output_dimensions == 256
    assert settings.bedrock_batch_size == 10_000
    assert settings.bedrock_poll_interval == 60
    assert settings.bedrock_max_wait_time == 7_200
    assert settings.publish_layer is False
    assert settings.layer_arn is None and settings.layer_name is None
    assert (settings.fts_stopwords, settings.fts_stemmer) == ("english", "english")


def test_values_are_read_and_typed() -> None:
    settings = load_settings(
        {
            "AWS_REGION": "eu-central-1",
            "PROCESSING_MODE": " Metadata ",
            "NIXPKGS": "/srv/nixpkgs",
            "NIXPKGS_JSON": "s3://fdnix-dumps/packages.json.zst",
            "OUTPUT_PATH": "/out/fdnix-data.lancedb",
            "OUTPUT_MINIFIED_PATH": "/out/fdnix.lancedb",
            "ARTIFACTS_BUCKET": "fdnix-artifacts",
            "LANCEDB_DATA_KEY": "/prod/data.lancedb/",
            "EMBEDDING_BACKEND": "bedrock",
            "BEDROCK_ROLE_ARN": ROLE_ARN,
            "BEDROCK_OUTPUT_DIMENSIONS": "1024",
            "BEDROCK_BATCH_SIZE": "500",
            "PUBLISH_LAYER": "yes",
            "LAYER_ARN": "arn:aws:lambda:eu-central-1:123456789012:layer:fdnix-db:3",
            "FTS_STEMMER": "",
            "VECTOR_INDEX_PARTITIONS": "64",
            "VECTOR_INDEX_SUB_VECTORS": "24",
        }
    )
    assert settings.aws_region == "eu-central-1"
    assert settings.job_name == "metadata_job"
    assert settings.nixpkgs == "/srv/nixpkgs"
    assert settings.nixpkgs_json == "s3://fdnix-dumps/packages.json.zst"
    assert settings.output_path == Path("/out/fdnix-data.lancedb")
    assert settings.work_dir == Path("/out/.fdnix-work")
    assert settings.uses_s3
    assert settings.lancedb_data_key == "prod/data.lancedb"
    assert settings.embedding_model_id == "amazon.titan-embed-text-v2:0"
    assert settings.embedding_dimensions == 1024
    assert settings.bedrock_batch_size == 500
    assert settings.publish_layer is True
    assert settings.layer_name == "fdnix-db"
    # An empty FTS_STEMMER disables stemming; unset keeps english.
    assert settings.fts_stemmer is None
    assert settings.fts_stopwords == "english"
    assert (settings.vector_index_partitions, settings.vector_index_sub_vectors) == (64, 24)


@pytest.mark.parametrize(
    ("mode", "job"),
    [
        ("metadata", "metadata_job"),
        ("embedding", "embedding_job"),
        ("minified", "minified_job"),
        ("both", "full_job"),
        ("full", "full_job"),
        ("FULL", "full_job"),
        ("", "full_job"),
    ],
)
def test_processing_mode_selects_the_job(mode: str, job: str) -> None:
    assert load_settings({"PROCESSING_MODE": mode}).job_name == job


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROCESSING_MODE", "everything"),
        ("EMBEDDING_BACKEND", "openai"),
        ("AWS_REGION", "Mars"),
        ("BEDROCK_BATCH_SIZE", "abc"),
        ("BEDROCK_BATCH_SIZE", "0"),
        ("BEDROCK_POLL_INTERVAL", "1.5"),
        ("BEDROCK_MAX_WAIT_TIME", "-1"),
        ("BEDROCK_OUTPUT_DIMENSIONS", "300"),
        ("BEDROCK_OUTPUT_DIMENSIONS", "wide"),
        ("VECTOR_INDEX_PARTITIONS", "many"),
        ("VECTOR_INDEX_SUB_VECTORS", "0"),
        ("PUBLISH_LAYER", "maybe"),
        ("ARTIFACTS_BUCKET", "My_Bucket"),
        ("ARTIFACTS_BUCKET", "ab"),
        ("BEDROCK_INPUT_BUCKET", "192.168.1.1"),
        ("BEDROCK_OUTPUT_BUCKET", "bucket..name"),
        ("BEDROCK_ROLE_ARN", "arn:aws:iam::123:role/x"),
        ("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:user/fdnix"),
        ("LAYER_ARN", "arn:aws:lambda:us-east-1:123456789012:function:fdnix"),
        ("LANCEDB_DATA_KEY", "data//fdnix"),
        ("LANCEDB_MINIFIED_KEY", "../escape"),
        ("NIXPKGS_JSON", "ftp://mirror.example/packages.json"),
        ("NIXPKGS_JSON", "s3://bucket-only"),
        ("NIXPKGS_JSON", "s3://Bad_Bucket/packages.json"),
        ("NIXPKGS", "s3://bucket/nixpkgs.tar.gz"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}="), message
    assert value.strip() in message


def test_bedrock_needs_a_role() -> None:
    with pytest.raises(SettingsError, match="EMBEDDING_BACKEND=bedrock needs BEDROCK_ROLE_ARN"):
        load_settings({"EMBEDDING_BACKEND": "bedrock"})


def test_duckdb_key_is_refused_with_the_new_names() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"DUCKDB_KEY": "snapshots/fdnix.duckdb"})
    message = str(raised.value)
    assert "DUCKDB_KEY" in message
    assert "LANCEDB_DATA_KEY" in message and "LANCEDB_MINIFIED_KEY" in message


def test_secrets_in_a_bad_url_are_not_repeated() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"NIXPKGS_JSON": "ftp://user:hunter2@mirror.example/p.json?sig=s3cr3t"})
    message = str(raised.value)
    assert "NIXPKGS_JSON=" in message and "mirror.example/p.json" in message
    assert "hunter2" not in message and "s3cr3t" not in message


@pytest.mark.parametrize(
    "value",
    [
        "/srv/dumps/packages.json.br",
        "relative/packages.json",
        "file:///srv/dumps/packages.json",
        "https://channels.example/nixos-unstable/packages.json.br",
        "s3://fdnix-dumps/a/b/packages.json.gz",
    ],
)
def test_good_listing_sources(value: str) -> None:
    assert load_settings({"NIXPKGS_JSON": value}).nixpkgs_json == value


@pytest.mark.parametrize(
    "value",
    ["<nixpkgs>", "/srv/nixpkgs", "https://channels.example/nixexprs.tar.xz"],
)
def test_good_nixpkgs_values(value: str) -> None:
    assert load_settings({"NIXPKGS": value}).nixpkgs == value


def test_a_bare_layer_name_is_accepted() -> None:
    settings = load_settings({"LAYER_ARN": "fdnix-db"})
    assert (settings.layer_arn, settings.layer_name) == ("fdnix-db", "fdnix-db")


def test_the_region_falls_back_to_aws_default_region() -> None:
    assert load_settings({"AWS_DEFAULT_REGION": "us-gov-west-1"}).aws_region == "us-gov-west-1"
