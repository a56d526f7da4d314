"""What earlier materializations of an asset recorded, as asset checks read it."""

from collections.abc import Mapping
from typing import Any

from dagster import AssetCheckExecutionContext, AssetKey, AssetRecordsFilter


def recent_metadata(
    context: AssetCheckExecutionContext, asset_key: AssetKey, limit: int = 1
) -> list[Mapping[str, Any]]:
    """Metadata of the asset's latest ``limit`` materializations, newest first.

    With channels (FDNIX_CHANNELS) only the run's channel counts: each channel's history is
    its own, and another channel's numbers say nothing about this one.
    """
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=asset_key,
            asset_partitions=[context.partition_key] if context.has_partition_key else None,
        ),
        limit=limit,
        ascending=False,
    ).records
    return [
        record.asset_materialization.metadata
        for record in records
        if record.asset_materialization is not None
    ]


def recorded_number(metadata: Mapping[str, Any] | None, *keys: str) -> float | None:
    """The first of ``keys`` the metadata holds, as a number; None when it holds none."""
    for key in keys:
        value = (metadata or {}).get(key)
        if value is not None:
            return float(value.value)
    return None
