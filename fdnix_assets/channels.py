"""Several nixpkgs channels side by side: one static partition per channel.

Set ``FDNIX_CHANNELS`` (for example ``nixos-unstable,nixos-25.11``) and every asset of the
pipeline is partitioned by channel. Each channel then has

- its own source: ``NIXPKGS`` / ``NIXPKGS_JSON`` with ``{channel}`` replaced by the channel
  name (default ``https://channels.nixos.org/{channel}/nixexprs.tar.xz``);
- its own storage: the channel becomes the parent directory of each dataset, locally
  (``out/nixos-unstable/fdnix-data.lancedb``) and in S3
  (``snapshots/nixos-unstable/fdnix-data.lancedb``), so two channels never share a prefix;
- its own Lambda layer: ``LAYER_ARN`` with ``{channel}`` replaced, or the channel appended to
  the layer name (``fdnix-nixos-25_11``; layer names cannot hold dots).

Without ``FDNIX_CHANNELS`` nothing is partitioned and none of this applies: the paths, keys
and layer are exactly the configured ones. The functions here are pure; the resources in
:mod:`fdnix_assets.resources` apply them to the channel of the run they serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

CHANNELS_VARIABLE = "FDNIX_CHANNELS"
CHANNEL_VARIABLE = "FDNIX_CHANNEL"
CHANNEL_PLACEHOLDER = "{channel}"
DEFAULT_CHANNEL_NIXPKGS = "https://channels.nixos.org/{channel}/nixexprs.tar.xz"
# The tags Dagster puts on a run of one partition, or of a range of partitions.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# A channel name is a path segment, an S3 key segment and a partition key: nixos-25.11,
# nixpkgs-unstable, nixos-25.11-small.
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LAYER_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")


class ChannelError(ValueError):
    """A channel name is unusable, or a run does not say which channel it is for."""


def channel_problem(name: str) -> str | None:
    """Why ``name`` cannot be a channel, or None when it can."""
    if not _CHANNEL_RE.match(name):
        return (
            "a channel name is 1-100 letters, digits, '.', '_' and '-', starting with a letter "
            "or digit (e.g. nixos-unstable, nixos-25.11)"
        )
    if ".." in name:
        return "a channel name cannot contain '..'"
    return None


def parse_channels(raw: str) -> tuple[str, ...]:
    """The channels of a comma-separated list, in order; raises :class:`ChannelError`."""
    channels: list[str] = []
    for item in raw.split(","):
        name = item.strip()
        if not name:
            raise ChannelError(f"{raw!r} has an empty channel name (a stray comma?)")
        problem = channel_problem(name)
        if problem:
            raise ChannelError(f"{name!r} is not a usable channel name: {problem}")
        if name in channels:
            raise ChannelError(f"{name!r} is listed twice")
        channels.append(name)
    return tuple(channels)


def channel_source(template: str, channel: str | None) -> str:
    """NIXPKGS or NIXPKGS_JSON for one channel: ``{channel}`` replaced by its name."""
    if channel is None:
        return template
    return template.replace(CHANNEL_PLACEHOLDER, channel)


def channel_path(path: str | Path, channel: str | None) -> Path:
    """A dataset's local path for one channel: ``out/fdnix.lancedb`` -> ``out/<channel>/...``."""
    path = Path(path)
    return path if channel is None else path.parent / channel / path.name


def channel_key(key: str, channel: str | None) -> str:
    """A dataset's S3 key prefix for one channel, by the same rule as :func:`channel_path`."""
    if channel is None:
        return key
    parts = PurePosixPath(key.strip("/"))
    parent = "" if str(parts.parent) == "." else f"{parts.parent}/"
    return f"{parent}{channel}/{parts.name}"


def layer_safe(channel: str) -> str:
    """The channel as Lambda layer names allow (letters, digits, '-', '_'): dots become '_'."""
    return _LAYER_UNSAFE_RE.sub("_", channel)


def channel_layer_arn(layer_arn: str | None, channel: str | None) -> str | None:
    """LAYER_ARN for one channel: ``{channel}`` replaced, else the channel appended to the name.

    ``arn:...:layer:fdnix`` -> ``arn:...:layer:fdnix-nixos-25_11``; a version suffix
    (``:3``) is dropped, since each channel's layer has versions of its own.
    """
    if layer_arn is None or channel is None:
        return layer_arn
    safe = layer_safe(channel)
    if CHANNEL_PLACEHOLDER in layer_arn:
        return layer_arn.replace(CHANNEL_PLACEHOLDER, safe)
    if ":layer:" not in layer_arn:
        return f"{layer_arn}-{safe}"
    head, tail = layer_arn.split(":layer:", 1)
    return f"{head}:layer:{tail.split(':', 1)[0]}-{safe}"


def run_channel(tags: Mapping[str, str], channels: Sequence[str]) -> str | None:
    """The channel a run is for, from its partition tags; None when channels are not in use.

    Also None for a run without a partition (a sensor tick, a check run alone): whatever
    then needs a channel-specific path raises :func:`require_channel`'s error instead.
    """
    if not channels:
        return None
    channel = tags.get(PARTITION_TAG)
    if channel is None:
        start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
        if start is not None and start != end:
            raise ChannelError(
                f"this run covers the channels {start}..{end}; each channel has its own "
                "datasets, so launch one run per channel"
            )
        channel = start
    if channel is not None and channel not in channels:
        raise ChannelError(
            f"this run is for channel {channel!r}, which {CHANNELS_VARIABLE} does not list "
            f"({', '.join(channels)})"
        )
    return channel


def require_channel(channel: str | None, channels: Sequence[str], what: str) -> str | None:
    """``channel``, checked: it must be set (and listed) exactly when channels are in use."""
    if not channels:
        if channel is not None:
            raise ChannelError(
                f"{what}: channel {channel!r} was asked for, but {CHANNELS_VARIABLE} is not set"
            )
        return None
    if channel is None:
        raise ChannelError(
            f"{what}: {CHANNELS_VARIABLE} is set ({', '.join(channels)}), so every run is for "
            "one channel. Pick the channel partition when launching: the UI asks; "
            "`dagster asset materialize` takes --partition <channel>; `dagster job execute` "
            """takes --tags '{"dagster/partition": "<channel>"}'; the entry point runs each """
            "channel in turn"
        )
    if channel not in channels:
        raise ChannelError(
            f"{what}: channel {channel!r} is not one of {CHANNELS_VARIABLE} ({', '.join(channels)})"
        )
    return channel
