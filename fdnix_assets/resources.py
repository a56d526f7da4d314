"""Dagster resources: where datasets are stored, what nixpkgs to read, how to log progress."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from dagster import ConfigurableResource, InitResourceContext
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from fdnix_assets.channels import (
    channel_key,
    channel_path,
    channel_source,
    require_channel,
    run_channel,
)
from fdnix_assets.nix.extract import DEFAULT_TIMEOUT_SECONDS, Listing, fetch_dump, run_nix_env
from fdnix_assets.storage import (
    DEFAULT_RETENTION,
    DatasetStore,
    LocalDatasetStore,
    Snapshot,
    StorageError,
    remove_abandoned_run_dirs,
)
from fdnix_assets.storage_s3 import S3DatasetStore, UploadProgress

DatasetKind = Literal["main", "minified"]


@dataclass(frozen=True)
class LocalCopy:
    """A local, writable LanceDB directory of a dataset, and where it came from."""

    path: Path
    # The snapshot copied there; None when an existing directory was used as it is.
    snapshot: Snapshot | None
    downloaded: bool
    seconds: float = 0.0


class ChannelScopedResource(ConfigurableResource):
    """A resource that serves one nixpkgs channel per run when FDNIX_CHANNELS is set.

    The channel is the run's partition key (its ``dagster/partition`` tag), read when the
    resource is set up for the run, so an asset or check that uses the resource reaches its
    channel's source and storage without passing the channel around. Without channels the
    resource is exactly what it is configured to be.
    """

    channels: list[str] = Field(
        default_factory=list, description="FDNIX_CHANNELS: one static partition per channel."
    )
    _channel: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.dagster_run
        self._channel = run_channel(run.tags if run else {}, self.channels)

    @property
    def channel(self) -> str | None:
        """The run's channel; raises when channels are in use and the run names none."""
        return require_channel(self._channel, self.channels, type(self).__name__)

    def for_channel(self, channel: str | None) -> Self:
        """This resource serving ``channel`` (for IO managers, tests and tools)."""
        scoped = self.model_copy()
        scoped._channel = require_channel(channel, self.channels, type(self).__name__)
        return scoped


class DatasetStorage(ChannelScopedResource):
    """Snapshots of both datasets: in S3 when ``artifacts_bucket`` is set, else on local disk.

    In S3 each dataset lives under its key prefix (``LANCEDB_DATA_KEY``,
    ``LANCEDB_MINIFIED_KEY``) as immutable snapshots plus a ``latest`` pointer (see
    :mod:`fdnix_assets.storage_s3`); locally, under the output paths (see
    :class:`~fdnix_assets.storage.LocalDatasetStore`). The S3 client comes from dagster-aws's
    ``S3Resource``; boto3 itself reads ``AWS_ENDPOINT_URL_S3`` for the endpoint.

    With channels (FDNIX_CHANNELS) each channel's datasets live one directory down, under
    the channel's name: ``out/<channel>/fdnix-data.lancedb``, ``snapshots/<channel>/...``.
    """

    output_path: str = Field(description="Local main dataset path (OUTPUT_PATH).")
    output_minified_path: str = Field(description="Local minified path (OUTPUT_MINIFIED_PATH).")
    artifacts_bucket: str | None = Field(default=None, description="ARTIFACTS_BUCKET")
    data_key: str = Field(default="snapshots/fdnix-data.lancedb", description="LANCEDB_DATA_KEY")
    minified_key: str = Field(default="snapshots/fdnix.lancedb", description="LANCEDB_MINIFIED_KEY")
    lancedb_path: str | None = Field(
        default=None,
        description=(
            "LANCEDB_PATH: a local copy of the main dataset for the embedding phase; "
            "downloaded from the latest snapshot when missing."
        ),
    )
    region: str = Field(default="us-east-1", description="AWS_REGION")
    retention: int = Field(default=DEFAULT_RETENTION, description="Snapshots kept per dataset.")
    s3: S3Resource = Field(default_factory=S3Resource)

    @property
    def uses_s3(self) -> bool:
        return self.artifacts_bucket is not None

    @property
    def work_dir(self) -> Path:
        """Scratch space beside the local outputs, so finished datasets move in by rename."""
        return self.dataset_path("main").absolute().parent / ".fdnix-work"

    def remove_abandoned_runs(self, current_run_id: str, log: Any = None) -> list[str]:
        """Deletes what killed runs left in the work directory (run directories untouched for
        ABANDONED_AFTER, never ``current_run_id``'s); returns their run ids."""
        removed = remove_abandoned_run_dirs(self.work_dir, current_run_id)
        if removed and log:
            log(
                f"removed {len(removed)} directory(ies) of runs that died before cleaning up "
                f"from {self.work_dir}: {', '.join(removed)}"
            )
        return removed

    def dataset_path(self, kind: DatasetKind) -> Path:
        """The local path of a dataset (the run's channel's, with channels)."""
        configured = self.output_path if kind == "main" else self.output_minified_path
        return channel_path(configured, self.channel)

    def key_prefix(self, kind: DatasetKind) -> str:
        """The S3 key prefix of a dataset (the run's channel's, with channels)."""
        return channel_key(self.data_key if kind == "main" else self.minified_key, self.channel)

    def store(
        self, kind: DatasetKind, upload_progress: UploadProgress | None = None
    ) -> DatasetStore:
        """The dataset's snapshot store; ``upload_progress`` hears how an S3 upload goes."""
        local_path = self.dataset_path(kind)
        if self.artifacts_bucket is None:
            return LocalDatasetStore(local_path, retention=self.retention)
        return S3DatasetStore(
            client=self.s3.get_client(),
            bucket=self.artifacts_bucket,
            prefix=self.key_prefix(kind),
            dataset=local_path.name,
            region=self.region,
            retention=self.retention,
            upload_progress=upload_progress,
        )

    def local_copy(
        self, kind: DatasetKind = "main", path: str | Path | None = None, log: Any = None
    ) -> LocalCopy:
        """A local LanceDB directory of the dataset, for a phase that must read or write files.

        This is the original indexer's ``LANCEDB_PATH`` behaviour, through the snapshot layer:

        - ``path`` (default: ``LANCEDB_PATH`` for the main dataset) names an existing,
          non-empty directory: it is used as it is, nothing is downloaded.
        - ``path`` is missing or empty: the latest snapshot (S3 or local) is downloaded or
          copied there, replacing it only once the copy is complete and verified.
        - no ``path`` and no ``LANCEDB_PATH``: a fresh copy of the latest snapshot goes to
          ``<work dir>/checkout/<dataset>``, replacing any older copy there.

        Raises :class:`~fdnix_assets.storage.StorageError` when there is no snapshot yet.
        """
        started = time.perf_counter()
        lancedb_path = channel_path(self.lancedb_path, self.channel) if self.lancedb_path else None
        explicit = path if path is not None else (lancedb_path if kind == "main" else None)
        store = self.store(kind)
        if explicit is not None:
            target = Path(explicit).absolute()
            if target.exists() and not target.is_dir():
                raise StorageError(f"{target} is a file, not a LanceDB dataset directory")
            if target.is_dir() and any(target.iterdir()):
                if log:
                    log(f"using the existing local {store.dataset} at {target}")
                return LocalCopy(path=target, snapshot=None, downloaded=False)
        else:
            target = self.work_dir / "checkout" / store.dataset
        snapshot = store.require_latest()
        if log:
            log(f"copying {store.dataset} snapshot {snapshot.uri} to {target}")
        store.checkout(snapshot, target)
        return LocalCopy(
            path=target,
            snapshot=snapshot,
            downloaded=True,
            seconds=time.perf_counter() - started,
        )


class NixpkgsSource(ChannelScopedResource):
    """What the metadata phase reads: ``nix-env`` on NIXPKGS, or the NIXPKGS_JSON dump.

    With channels, ``{channel}`` in either is replaced by the run's channel.
    """

    nixpkgs: str = Field(default="<nixpkgs>", description="NIXPKGS: path, <nixpkgs> or URL.")
    nixpkgs_json: str | None = Field(default=None, description="NIXPKGS_JSON: a ready dump.")
    timeout_seconds: int = Field(default=DEFAULT_TIMEOUT_SECONDS)
    s3: S3Resource = Field(default_factory=S3Resource)

    @property
    def description(self) -> str:
        return channel_source(self.nixpkgs_json or self.nixpkgs, self.channel)

    def fetch(self, work_dir: Path, log: Any) -> Listing:
        if self.nixpkgs_json:
            return fetch_dump(
                channel_source(self.nixpkgs_json, self.channel),
                work_dir,
                s3_client_factory=self.s3.get_client,
                log=log,
            )
        return run_nix_env(
            channel_source(self.nixpkgs, self.channel),
            work_dir,
            timeout_seconds=self.timeout_seconds,
            log=log,
        )
