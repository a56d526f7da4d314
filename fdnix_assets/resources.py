"""Dagster resources: where datasets are stored, what nixpkgs to read, how to log progress."""

from pathlib import Path
from typing import Any, Literal

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from fdnix_assets.nix.extract import DEFAULT_TIMEOUT_SECONDS, Listing, fetch_dump, run_nix_env
from fdnix_assets.storage import DEFAULT_RETENTION, DatasetStore, LocalDatasetStore

DatasetKind = Literal["main", "minified"]


class DatasetStorage(ConfigurableResource):
    """Snapshots of both datasets: in S3 when ``artifacts_bucket`` is set, else on local disk."""

    output_path: str = Field(description="Local main dataset path (OUTPUT_PATH).")
    output_minified_path: str = Field(description="Local minified path (OUTPUT_MINIFIED_PATH).")
    artifacts_bucket: str | None = Field(default=None, description="ARTIFACTS_BUCKET")
    data_key: str = Field(default="snapshots/fdnix-data.lancedb", description="LANCEDB_DATA_KEY")
    minified_key: str = Field(default="snapshots/fdnix.lancedb", description="LANCEDB_MINIFIED_KEY")
    region: str = Field(default="us-east-1", description="AWS_REGION")
    retention: int = Field(default=DEFAULT_RETENTION, description="Snapshots kept per dataset.")
    s3: S3Resource = Field(default_factory=S3Resource)

    @property
    def uses_s3(self) -> bool:
        return self.artifacts_bucket is not None

    @property
    def work_dir(self) -> Path:
        """Scratch space beside the local outputs, so finished datasets move in by rename."""
        return Path(self.output_path).absolute().parent / ".fdnix-work"

    def store(self, kind: DatasetKind) -> DatasetStore:
        local_path = Path(self.output_path if kind == "main" else self.output_minified_path)
        if self.artifacts_bucket is None:
            return LocalDatasetStore(local_path, retention=self.retention)
        from fdnix_assets.storage_s3 import S3DatasetStore

        return S3DatasetStore(
            client=self.s3.get_client(),
            bucket=self.artifacts_bucket,
            prefix=self.data_key if kind == "main" else self.minified_key,
            dataset=local_path.name,
            region=self.region,
            retention=self.retention,
        )


class NixpkgsSource(ConfigurableResource):
    """What the metadata phase reads: ``nix-env`` on NIXPKGS, or the NIXPKGS_JSON dump."""

    nixpkgs: str = Field(default="<nixpkgs>", description="NIXPKGS: path, <nixpkgs> or URL.")
    nixpkgs_json: str | None = Field(default=None, description="NIXPKGS_JSON: a ready dump.")
    timeout_seconds: int = Field(default=DEFAULT_TIMEOUT_SECONDS)
    s3: S3Resource = Field(default_factory=S3Resource)

    @property
    def description(self) -> str:
        return self.nixpkgs_json or self.nixpkgs

    def fetch(self, work_dir: Path, log: Any) -> Listing:
        if self.nixpkgs_json:
            return fetch_dump(
                self.nixpkgs_json, work_dir, s3_client_factory=self.s3.get_client, log=log
            )
        return run_nix_env(self.nixpkgs, work_dir, timeout_seconds=self.timeout_seconds, log=log)
