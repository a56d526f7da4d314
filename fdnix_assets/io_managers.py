"""The IO manager that moves dataset directories between assets through snapshot storage.

Assets return a :class:`StagedDataset` (a finished LanceDB directory in scratch space); the
IO manager publishes it as a new snapshot and moves the dataset's pointer. Downstream assets
receive the :class:`~fdnix_assets.storage.Snapshot` the pointer names: a local path or an
``s3://`` URI that LanceDB opens directly. Files move, never pickled Python objects.

Why an IO manager rather than assets that upload themselves: storing is the same for every
dataset asset (snapshot, verify, move the pointer, prune), the assets stay free of S3 and
local-disk details, and Dagster wires each downstream asset to the snapshot its upstream
published, with the storage metadata attached to the materialization in one place.

With channels (FDNIX_CHANNELS) the assets are partitioned by channel and each partition is
published to and read from its channel's own prefix.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)

from fdnix_assets.resources import DatasetKind, DatasetStorage
from fdnix_assets.storage import Snapshot, new_snapshot_id

DATASET_METADATA_KEY = "fdnix/dataset"


@dataclass(frozen=True)
class StagedDataset:
    """A finished dataset directory waiting to be published."""

    path: Path
    rows: int


def dataset_kind(metadata: object) -> DatasetKind:
    kind = (metadata or {}).get(DATASET_METADATA_KEY) if isinstance(metadata, dict) else None
    if kind not in ("main", "minified"):
        raise ValueError(f"asset does not declare {DATASET_METADATA_KEY!r} as main or minified")
    return kind


class DatasetIOManager(ConfigurableIOManager):
    """Publishes each dataset asset as a snapshot under its key prefix or output path."""

    storage: ResourceDependency[DatasetStorage]

    def _storage_for(self, context: OutputContext | InputContext) -> DatasetStorage:
        """The storage of the partition's channel (FDNIX_CHANNELS), or the only storage.

        An asset check is not partitioned, so its input spans every channel's partition;
        it reads the channel of the run it is part of, which the storage knows from the run.
        """
        if context.has_asset_partitions and len(context.asset_partition_keys) == 1:
            return self.storage.for_channel(context.asset_partition_keys[0])
        return self.storage

    def handle_output(self, context: OutputContext, obj: StagedDataset) -> None:
        kind = dataset_kind(context.definition_metadata)

        def log_upload(sent: int, total: int, seconds: float) -> None:
            context.log.info(
                f"uploading the {kind} dataset: {sent / 1e6:,.1f} of {total / 1e6:,.1f} MB in "
                f"{seconds:.0f} s ({sent / 1e6 / max(seconds, 1e-9):.1f} MB/s)"
            )

        store = self._storage_for(context).store(kind, upload_progress=log_upload)
        try:
            report = store.publish(obj.path, new_snapshot_id(context.run_id))
        finally:
            # Published or not, the staged copy is done with: a failed publish (S3 down, a
            # full disk) must not leave a whole dataset behind in the work directory.
            shutil.rmtree(obj.path, ignore_errors=True)
        context.log.info(
            f"published {store.dataset} snapshot {report.snapshot.snapshot_id} to "
            f"{report.snapshot.uri}: {report.file_count} files, "
            f"{report.total_bytes / 1e6:.1f} MB, uploaded in {report.upload_seconds:.1f} s "
            f"({report.upload_megabytes_per_second:.1f} MB/s); pointer {store.location}"
        )
        if report.superseded_by:
            context.log.warning(
                f"another run published {store.dataset} snapshot {report.superseded_by} while "
                f"this one ran; it stays the latest, and {report.snapshot.snapshot_id} is kept "
                "but not pointed to"
            )
        if report.deleted_snapshots:
            context.log.info(
                f"retention ({store.retention} kept) deleted snapshots: "
                + ", ".join(report.deleted_snapshots)
            )
        metadata = report.as_metadata() | {"rows": obj.rows}
        metadata["snapshot_uri"] = MetadataValue.path(report.snapshot.uri)
        context.add_output_metadata(metadata)

    def load_input(self, context: InputContext) -> Snapshot:
        upstream = context.upstream_output
        if upstream is None:
            raise ValueError("DatasetIOManager loads only the outputs of upstream assets")
        store = self._storage_for(context).store(dataset_kind(upstream.definition_metadata))
        # What this run published itself, when it did: another run publishing at the same
        # time may have moved the pointer to its own snapshot, perhaps not yet embedded.
        run_id = _run_id(context)
        own = store.newest_of_run(run_id) if run_id else None
        snapshot = own or store.require_latest()
        context.log.info(f"reading {store.dataset} snapshot {snapshot.uri}")
        return snapshot


def _run_id(context: InputContext) -> str | None:
    """The run loading the input; None outside a step (a test building contexts by hand)."""
    try:
        return context.step_context.run_id
    except DagsterInvariantViolationError:
        return None
