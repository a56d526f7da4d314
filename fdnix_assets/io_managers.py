"""The IO manager that moves dataset directories between assets through snapshot storage.

Assets return a :class:`StagedDataset` (a finished LanceDB directory in scratch space); the
IO manager publishes it as a new snapshot and moves the dataset's pointer. Downstream assets
receive the :class:`~fdnix_assets.storage.Snapshot` the pointer names: a local path or an
``s3://`` URI that LanceDB opens directly. Files move, never pickled Python objects.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

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

    def handle_output(self, context: OutputContext, obj: StagedDataset) -> None:
        store = self.storage.store(dataset_kind(context.definition_metadata))
        report = store.publish(obj.path, new_snapshot_id(context.run_id))
        shutil.rmtree(obj.path, ignore_errors=True)
        context.log.info(
            f"published {store.dataset} snapshot {report.snapshot.snapshot_id}: "
            f"{report.file_count} files, {report.total_bytes / 1e6:.1f} MB "
            f"in {report.seconds:.1f} s"
        )
        context.add_output_metadata(report.as_metadata() | {"rows": obj.rows})

    def load_input(self, context: InputContext) -> Snapshot:
        upstream = context.upstream_output
        assert upstream is not None
        store = self.storage.store(dataset_kind(upstream.definition_metadata))
        snapshot = store.require_latest()
        context.log.info(f"reading {store.dataset} snapshot {snapshot.uri}")
        return snapshot
