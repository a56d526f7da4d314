"""Turns nix's loosely typed package records into the typed columns of the main dataset.

The input is the bytes ``nix-env -qaP --json --meta`` prints (or a channel's
``packages.json``). The outer object is decoded in one pass into small structs that keep each
``meta`` as a raw slice of the input, so the 300 MB dump never becomes 120k nested dicts at
once; each ``meta`` is then decoded, normalized straight into per-column Python lists, and
dropped. Arrow arrays are built from those lists at the end.

Every value that does not have the shape nixpkgs documents (a null description, a number as a
version, a list where a string belongs) becomes a null or an empty list and is counted in
:attr:`NormalizedPackages.issues`, keyed ``"<field>: <what was wrong>"``. Nothing here raises
on a bad package; only input that is not a package listing at all raises
:class:`InvalidDumpError`.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

import msgspec
import numpy as np
import pyarrow as pa

from fdnix_assets.embedding.text import content_hash, embedding_text
from fdnix_assets.schema import main_schema

# Where nix-env's own split of `name` ends up, and the wrapper's record of what it fixed.
FDNIX_META_KEY = "_fdnix"
CHANNEL_PREFIXES = re.compile(
    r"^(nixpkgs|nixos|nixos-unstable|nixpkgs-unstable|nixos-\d\d\.\d\d)\."
)
# A store path, also inside a chroot store (`nix-env --store DIR` puts it under DIR).
STORE_PATH_PREFIX = re.compile(r"^(?:/[^:]*?)?/nix/store/[0-9a-z]{32}-[^/]*/")
# C0 controls other than tab and newline, DEL, and lone surrogates from invalid UTF-8.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
ATTR_PATH_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DRV_NAME_SPLIT = re.compile(r"-(?=[^A-Za-z])")
MAX_TEXT_CHARS = 64_000
MAX_LIST_ITEMS = 256
INT64_MAX = 2**63 - 1
INVALID_UTF8_ISSUE = "input: invalid UTF-8 bytes replaced with U+FFFD"


class InvalidDumpError(ValueError):
    """The input is not a package listing in either known shape."""


class _DecodeCount(threading.local):
    packages = 0


# Records decoded by the last decode in this thread: more than the object's keys means
# repeated attribute paths, which a JSON object silently collapses to the last record.
_decode_count = _DecodeCount()


class _Package(msgspec.Struct, gc=False):
    """One value of the nix-env object; ``meta`` stays raw until its turn comes."""

    name: Any = None
    pname: Any = None
    version: Any = None
    system: Any = None
    outputName: Any = None
    outputs: Any = None
    meta: msgspec.Raw = msgspec.Raw(b"{}")

    def __post_init__(self) -> None:
        _decode_count.packages += 1


class _ChannelListing(msgspec.Struct):
    version: int
    packages: dict[str, _Package]


@dataclass(kw_only=True)
class NormalizationReport:
    """An account of everything that was wrong with the input, and how it was read."""

    issues: Counter[str] = field(default_factory=Counter)
    evaluation_failures: list[str] = field(default_factory=list)
    invalid_meta: dict[str, list[str]] = field(default_factory=dict)
    stripped_channel_prefix: str | None = None
    input_shape: str = "nix-env"
    seconds: float = 0.0
    workers: int = 1


@dataclass(kw_only=True)
class NormalizedPackages(NormalizationReport):
    """The main dataset's rows plus the :class:`NormalizationReport` on the input."""

    table: pa.Table

    @property
    def row_count(self) -> int:
        return self.table.num_rows


def repair_utf8(data: bytes) -> bytes:
    """``data`` with every invalid UTF-8 sequence replaced by U+FFFD."""
    return data.decode("utf-8", "replace").encode("utf-8")


def _decode_repairing(data: bytes) -> tuple[dict[str, _Package], str, bool]:
    """Decodes either shape: the packages by attribute path, the shape's name, and whether
    invalid UTF-8 had to be replaced.

    nix-env writes the bytes of Nix strings as they are, so a description read from a Latin-1
    file arrives as invalid UTF-8. Rejecting the whole listing for that would be absurd; the
    bytes become U+FFFD instead. (Bytes inside ``meta`` are only looked at per package.)
    """
    try:
        try:
            return (*_decode_listing(data), False)
        except UnicodeDecodeError:
            return (*_decode_listing(repair_utf8(data)), True)
    except RecursionError:
        raise InvalidDumpError(
            "the package listing nests JSON values more than about "
            f"{sys.getrecursionlimit()} levels deep, which no nixpkgs meta does; "
            "the input is damaged or not a package listing"
        ) from None


def _decode_meta(
    decoder: msgspec.json.Decoder[Any], raw: msgspec.Raw, issues: Counter[str]
) -> dict[str, Any]:
    """One package's ``meta``; anything that is not a readable object becomes ``{}``."""
    try:
        try:
            meta = decoder.decode(raw)
        except UnicodeDecodeError:
            issues[INVALID_UTF8_ISSUE] += 1
            meta = decoder.decode(repair_utf8(bytes(raw)))
    except msgspec.DecodeError:
        issues["meta: not valid JSON, treated as empty"] += 1
        return {}
    except RecursionError:
        issues["meta: nested too deeply to read, treated as empty"] += 1
        return {}
    if not isinstance(meta, dict):
        issues["meta: not an object, treated as empty"] += 1
        return {}
    return meta


def _decode_listing(data: bytes) -> tuple[dict[str, _Package], str]:
    stripped = data.lstrip()
    if not stripped:
        raise InvalidDumpError("the package listing is empty (no bytes at all)")
    if not stripped.startswith(b"{"):
        raise InvalidDumpError(
            f"the package listing is not a JSON object: it starts with {stripped[:40]!r}"
        )
    _decode_count.packages = 0
    try:
        return msgspec.json.decode(stripped, type=dict[str, _Package]), "nix-env"
    except msgspec.ValidationError as error:
        shape_error = error
    except msgspec.DecodeError as error:
        raise InvalidDumpError(
            f"the package listing is not valid JSON ({error}); a truncated nix-env output "
            "usually means a meta attribute threw during evaluation"
        ) from None
    # Not attribute path -> package: maybe a channel's packages.json.
    _decode_count.packages = 0
    try:
        channel = msgspec.json.decode(stripped, type=_ChannelListing)
    except msgspec.ValidationError:
        raise InvalidDumpError(
            "the package listing has neither the nix-env shape (an object of attribute path "
            'to package object) nor the packages.json shape ({"version": 2, "packages": '
            f"{{...}}}}): {shape_error}"
        ) from None
    if channel.version != 2:
        raise InvalidDumpError(
            f"packages.json version {channel.version} is not supported (only version 2 is)"
        )
    return channel.packages, "packages.json"


def _string(value: Any, field_name: str, issues: Counter[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if CONTROL_CHARACTERS.search(value):
            issues[f"{field_name}: control characters removed"] += 1
            value = CONTROL_CHARACTERS.sub("", value)
        if len(value) > MAX_TEXT_CHARS:
            issues[f"{field_name}: longer than {MAX_TEXT_CHARS} characters, truncated"] += 1
            value = value[:MAX_TEXT_CHARS]
        return value
    issues[f"{field_name}: {type(value).__name__} where a string belongs"] += 1
    return None


def _text(value: Any, field_name: str, issues: Counter[str]) -> str | None:
    text = _string(value, field_name, issues)
    if text is None:
        return None
    text = text.strip()
    return text or None


def _string_list(value: Any, field_name: str, issues: Counter[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        issues[f"{field_name}: {type(value).__name__} where a list belongs"] += 1
        return []
    if len(value) > MAX_LIST_ITEMS:
        issues[f"{field_name}: more than {MAX_LIST_ITEMS} items, truncated"] += 1
        value = value[:MAX_LIST_ITEMS]
    strings = [item for item in value if isinstance(item, str)]
    if len(strings) != len(value):
        for item in value:
            if not isinstance(item, str):
                issues[f"{field_name}: {type(item).__name__} in a list of strings"] += 1
    return _clean_strings(strings, field_name, issues)


def _clean_strings(strings: list[str], field_name: str, issues: Counter[str]) -> list[str]:
    """Sanitizes like :func:`_string`, with one scan of the joined items instead of one each."""
    joined = "".join(strings)
    if len(joined) > MAX_TEXT_CHARS or CONTROL_CHARACTERS.search(joined):
        return [_string(item, field_name, issues) for item in strings]  # type: ignore[misc]
    return strings


def _platforms(value: Any, field_name: str, issues: Counter[str]) -> list[str]:
    """Platforms are strings (``x86_64-linux``) or, in newer nixpkgs, parsed-system patterns."""
    if isinstance(value, list):
        strings = [item for item in value if isinstance(item, str)]
        if len(strings) != len(value):
            issues[f"{field_name}: platform patterns (not strings) left out"] += 1
        if len(strings) > MAX_LIST_ITEMS:
            issues[f"{field_name}: more than {MAX_LIST_ITEMS} items, truncated"] += 1
            strings = strings[:MAX_LIST_ITEMS]
        return _clean_strings(strings, field_name, issues)
    return _string_list(value, field_name, issues)


def _bool(value: Any, field_name: str, issues: Counter[str]) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    issues[f"{field_name}: {type(value).__name__} where a boolean belongs"] += 1
    return None


def _license(value: Any, issues: Counter[str]) -> dict[str, Any] | None:
    if isinstance(value, str):
        text = _text(value, "meta.license", issues)
        return {"short_name": text} if text else None
    if isinstance(value, dict):
        return {
            "spdx_id": _string(value.get("spdxId"), "meta.license.spdxId", issues),
            "short_name": _string(value.get("shortName"), "meta.license.shortName", issues),
            "full_name": _string(value.get("fullName"), "meta.license.fullName", issues),
            "url": _string(value.get("url"), "meta.license.url", issues),
            "free": _bool(value.get("free"), "meta.license.free", issues),
            "redistributable": _bool(
                value.get("redistributable"), "meta.license.redistributable", issues
            ),
            "deprecated": _bool(value.get("deprecated"), "meta.license.deprecated", issues),
        }
    issues[f"meta.license: {type(value).__name__} is not a license"] += 1
    return None


def _licenses(value: Any, issues: Counter[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_LIST_ITEMS:
        issues[f"meta.license: more than {MAX_LIST_ITEMS} licenses, truncated"] += 1
        items = items[:MAX_LIST_ITEMS]
    licenses = [_license(item, issues) for item in items]
    return [item for item in licenses if item is not None]


def _github_id(value: Any, issues: Counter[str]) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if value is None or (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX
    ):
        return value
    issues["meta.maintainers.githubId: not a GitHub user id (a non-negative 64-bit integer)"] += 1
    return None


def _person(value: Any, field_name: str, issues: Counter[str]) -> dict[str, Any] | None:
    if isinstance(value, str):
        # Old nixpkgs wrote maintainers as "Name <email>" strings.
        return {"name": _text(value, f"{field_name}.name", issues)}
    if not isinstance(value, dict):
        issues[f"{field_name}: {type(value).__name__} is not a person"] += 1
        return None
    return {
        "name": _string(value.get("name"), f"{field_name}.name", issues),
        "email": _string(value.get("email"), f"{field_name}.email", issues),
        "github": _string(value.get("github"), f"{field_name}.github", issues),
        "github_id": _github_id(value.get("githubId"), issues),
        "matrix": _string(value.get("matrix"), f"{field_name}.matrix", issues),
    }


def _people(value: Any, field_name: str, issues: Counter[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        issues[f"{field_name}: {type(value).__name__} where a list belongs"] += 1
        return []
    people = [_person(item, field_name, issues) for item in value[:MAX_LIST_ITEMS]]
    return [person for person in people if person is not None]


def _teams(value: Any, issues: Counter[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        issues[f"meta.teams: {type(value).__name__} where a list belongs"] += 1
        return []
    teams = []
    for team in value[:MAX_LIST_ITEMS]:
        if not isinstance(team, dict):
            issues[f"meta.teams: {type(team).__name__} is not a team"] += 1
            continue
        teams.append(
            {
                "short_name": _string(team.get("shortName"), "meta.teams.shortName", issues),
                "scope": _string(team.get("scope"), "meta.teams.scope", issues),
                "github_teams": _string_list(
                    team.get("githubTeams"), "meta.teams.githubTeams", issues
                ),
                "members": _people(team.get("members"), "meta.teams.members", issues),
            }
        )
    return teams


def _source_provenance(value: Any, issues: Counter[str]) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    names = []
    for item in items[:MAX_LIST_ITEMS]:
        if isinstance(item, dict) and isinstance(item.get("shortName"), str):
            names.append(item["shortName"])
        elif isinstance(item, str):
            names.append(item)
        else:
            issues["meta.sourceProvenance: unrecognised entry"] += 1
    return names


def relative_position(position: str | None, nixpkgs_root: str | None) -> str | None:
    """``/nix/store/<hash>-source/pkgs/x/default.nix:12`` -> ``pkgs/x/default.nix:12``."""
    if not position:
        return None
    stripped = STORE_PATH_PREFIX.sub("", position, count=1)
    if stripped != position:
        return stripped
    if nixpkgs_root:
        root = nixpkgs_root.rstrip("/") + "/"
        if position.startswith(root):
            return position[len(root) :]
    return position


def split_derivation_name(name: str) -> tuple[str, str]:
    """Nix's own split (``builtins.parseDrvName``): at the first ``-`` not followed by a letter."""
    match = DRV_NAME_SPLIT.search(name)
    if match is None:
        return name, ""
    return name[: match.start()], name[match.end() :]


def common_channel_prefix(attr_paths: Iterable[str]) -> str | None:
    """The channel name every attribute path starts with (``nixpkgs.``), if they all share one."""
    prefix: str | None = None
    for path in attr_paths:
        match = CHANNEL_PREFIXES.match(path)
        if match is None:
            return None
        if prefix is None:
            prefix = match.group(0)
        elif match.group(0) != prefix:
            return None
    return prefix


class _ColumnBatches:
    """Rows as tuples, turned into an Arrow record batch every ``batch_rows`` rows.

    Converting in batches keeps at most one batch of Python objects alive beside the Arrow
    data, which is what holds peak memory down on the full nixpkgs listing. Rows are kept
    whole and transposed into columns by ``zip`` at flush time, which is cheaper than one
    ``append`` per column per row.
    """

    def __init__(self, schema: pa.Schema, batch_rows: int) -> None:
        self.schema = schema
        self.names = schema.names
        self.batch_rows = batch_rows
        self.rows: list[tuple[Any, ...]] = []

    def append(self, row: dict[str, Any]) -> pa.RecordBatch | None:
        """Adds a row; returns a full batch when this row completed one."""
        if not self.rows and list(row) != self.names:
            raise AssertionError(f"row fields {list(row)} are not the schema's {self.names}")
        self.rows.append(tuple(row.values()))
        return self.flush() if len(self.rows) >= self.batch_rows else None

    def flush(self) -> pa.RecordBatch | None:
        if not self.rows:
            return None
        count = len(self.rows)
        columns = list(zip(*self.rows, strict=True))
        self.rows = []
        arrays = [
            _column_array(values, field, count)
            for values, field in zip(columns, self.schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _column_array(values: tuple[Any, ...], field: pa.Field, count: int) -> pa.Array:
    """One column of a batch.

    ``meta_json`` (about 190 MB on the full listing) is built from one joined buffer:
    ``pa.array`` would copy the byte strings one by one into a buffer it keeps regrowing,
    which measured several times slower.
    """
    if field.name == "vector":
        return _null_vectors(count, field.type)
    if field.name == "meta_json":
        return _utf8_array(values, field.type)
    return pa.array(values, type=field.type)


@functools.lru_cache(maxsize=4)
def _null_vectors(count: int, vector_type: pa.DataType) -> pa.Array:
    """An all-null vector column. Its child array is as long as the vectors would be, so
    batches of the same size share one instead of each allocating its own zeros."""
    return pa.nulls(count, type=vector_type)


def _offsets(lengths: Iterable[int], count: int) -> pa.Array:
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(np.fromiter(lengths, dtype=np.int64, count=count), out=offsets[1:])
    return pa.array(offsets)


def _utf8_array(encoded: tuple[bytes, ...], string_type: pa.DataType) -> pa.Array:
    """A string array from UTF-8 byte strings, checked to be UTF-8 in one pass."""
    data = b"".join(encoded)
    offsets = _offsets(map(len, encoded), len(encoded))
    array = pa.Array.from_buffers(
        string_type, len(encoded), [None, offsets.buffers()[1], pa.py_buffer(data)]
    )
    array.validate(full=True)
    return array


def normalize_listing(
    data: bytes,
    *,
    model_id: str,
    dimensions: int,
    nixpkgs_root: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    progress_every: int = 20_000,
) -> NormalizedPackages:
    """Decodes and normalizes a whole listing into the main dataset's Arrow table."""
    # Millions of short-lived containers would trigger a full cyclic collection every few
    # thousand rows (each traversing everything alive); nothing built here forms cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _normalize(data, model_id, dimensions, nixpkgs_root, progress, progress_every)
    finally:
        if gc_was_enabled:
            gc.enable()


def _normalize(
    data: bytes,
    model_id: str,
    dimensions: int,
    nixpkgs_root: str | None,
    progress: Callable[[int, int], None] | None,
    progress_every: int,
) -> NormalizedPackages:
    started = time.perf_counter()
    decoded = _decode_share(data)
    account = _ShareAccount()
    batches = list(
        _share_batches(
            decoded, 0, 1, model_id, dimensions, nixpkgs_root, progress, progress_every, account
        )
    )
    if progress is not None:
        progress(decoded.total, decoded.total)
    table = pa.Table.from_batches(batches, schema=main_schema(dimensions))
    report = account.report(decoded, time.perf_counter() - started, workers=1)
    return NormalizedPackages(table=table, **vars(report))


@dataclass
class _DecodedListing:
    """The outer object decoded, with what every share needs to know about the whole."""

    items: list[tuple[str, _Package] | None]
    shape: str
    repaired: bool
    prefix: str | None
    total: int
    duplicates: int = 0


def _decode_share(data: bytes) -> _DecodedListing:
    packages, shape, repaired = _decode_repairing(data)
    if not packages:
        raise InvalidDumpError("the package listing holds no packages (an empty JSON object)")
    duplicates = max(0, _decode_count.packages - len(packages))
    prefix = common_channel_prefix(packages)
    items: list[tuple[str, _Package] | None] = list(packages.items())
    packages.clear()
    return _DecodedListing(
        items=items,
        shape=shape,
        repaired=repaired,
        prefix=prefix,
        total=len(items),
        duplicates=duplicates,
    )


@dataclass
class _ShareAccount:
    """What was wrong in one share of the listing or, merged, in all of it."""

    issues: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    invalid_meta: dict[str, list[str]] = field(default_factory=dict)

    def merge(self, other: _ShareAccount) -> None:
        self.issues.update(other.issues)
        self.failures.extend(other.failures)
        self.invalid_meta.update(other.invalid_meta)

    def report(self, decoded: _DecodedListing, seconds: float, workers: int) -> NormalizationReport:
        return NormalizationReport(
            issues=self.issues,
            evaluation_failures=self.failures,
            invalid_meta=self.invalid_meta,
            stripped_channel_prefix=decoded.prefix.rstrip(".") if decoded.prefix else None,
            input_shape=decoded.shape,
            seconds=seconds,
            workers=workers,
        )


def _share_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    return total * index // count, total * (index + 1) // count


def _share_batches(
    decoded: _DecodedListing,
    index: int,
    count: int,
    model_id: str,
    dimensions: int,
    nixpkgs_root: str | None,
    progress: Callable[[int, int], None] | None,
    progress_every: int,
    account: _ShareAccount,
) -> Iterator[pa.RecordBatch]:
    """Normalizes share ``index`` of ``count`` equal, contiguous slices of the listing,
    yielding record batches as they fill and recording what was wrong in ``account``.

    Attribute paths are keys of one JSON object, and stripping a prefix every key shares keeps
    them distinct, so slices never collide with each other; a path can only be bad in itself
    (empty, or holding control characters).
    """
    issues = account.issues
    if decoded.repaired and index == 0:
        issues[INVALID_UTF8_ISSUE] += 1
    if decoded.duplicates and index == 0:
        issues["attr_path: empty or duplicate, package left out"] += decoded.duplicates
    prefix = decoded.prefix
    columns = _ColumnBatches(main_schema(dimensions), BATCH_ROWS)
    meta_decoder = msgspec.json.Decoder()
    meta_encoder = msgspec.json.Encoder()
    start, stop = _share_bounds(decoded.total, index, count)
    items = decoded.items
    # The other shares are other processes' work: drop them now rather than carry them.
    items[:start] = [None] * start
    items[stop:] = [None] * (len(items) - stop)

    for position in range(start, stop):
        item = items[position]
        # Forget the package as soon as it is a row, so its meta bytes can be freed.
        items[position] = None
        assert item is not None
        raw_path, package = item
        done = position - start
        if progress is not None and done and done % progress_every == 0:
            # Every share advances at about the same rate; this one speaks for all of them.
            progress(min(done * count, decoded.total), decoded.total)
        attr_path = raw_path[len(prefix) :] if prefix else raw_path
        if not attr_path:
            issues["attr_path: empty or duplicate, package left out"] += 1
            continue
        if not attr_path.isprintable() and ATTR_PATH_CONTROL.search(attr_path):
            # Not a name anyone can type or install; shown raw it could drive a terminal.
            issues["attr_path: control characters, package left out"] += 1
            continue
        meta = _decode_meta(meta_decoder, package.meta, issues)
        fdnix = meta.pop(FDNIX_META_KEY, None)
        if not isinstance(fdnix, dict):
            fdnix = {}
        if fdnix.get("evaluationFailed"):
            account.failures.append(attr_path)
            continue
        if fdnix.get("invalidMeta"):
            account.invalid_meta[attr_path] = [str(name) for name in fdnix["invalidMeta"]]
        meta_json = _meta_json(meta_encoder, meta, issues)
        row = _row(
            attr_path, package, meta, meta_json, fdnix, issues, nixpkgs_root, model_id, dimensions
        )
        batch = columns.append(row)
        if batch is not None:
            yield batch
    # Every undecoded meta points into the listing's bytes; with the last one gone, they go.
    items.clear()
    last = columns.flush()
    if last is not None:
        yield last


def default_workers() -> int:
    """One normalizing process per core this process may run on, at most four."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


# Rows per record batch: the Python objects of one batch are alive at a time, about 5 kB a
# row on nixpkgs, so this bounds memory; much smaller batches make Arrow calls dominate.
BATCH_ROWS = 10_000
# Below this size a second process costs more to start than it saves.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024


class NormalizedStream:
    """A listing's rows as Arrow record batches, normalized while the consumer reads them.

    Handing :meth:`batches` straight to the dataset writer lets LanceDB encode and write one
    batch while the next is being normalized. This process normalizes the first share and
    worker processes the others; after each of its own batches it passes on whatever the
    workers have finished, so the writer keeps up with every process. Rows therefore come
    in an order that depends on timing (each share's rows keep theirs). The account of
    issues is complete once :meth:`batches` is exhausted; :attr:`error` keeps an exception
    raised while a writer was pulling batches, which the writer may report only as text.
    """

    def __init__(
        self,
        decoded: _DecodedListing,
        workers: list[_Worker],
        model_id: str,
        dimensions: int,
        nixpkgs_root: str | None,
        progress: Callable[[int, int], None] | None,
        progress_every: int,
    ) -> None:
        self.schema = main_schema(dimensions)
        self.total = decoded.total
        self.workers = len(workers) + 1
        self.rows = 0
        self.error: BaseException | None = None
        self._decoded = decoded
        self._workers = workers
        self._account = _ShareAccount()
        self._arguments = (model_id, dimensions, nixpkgs_root, progress, progress_every)
        self._started = time.perf_counter()

    def batches(self) -> Iterator[pa.RecordBatch]:
        model_id, dimensions, nixpkgs_root, progress, progress_every = self._arguments
        own = _share_batches(
            self._decoded,
            0,
            self.workers,
            model_id,
            dimensions,
            nixpkgs_root,
            progress,
            progress_every,
            self._account,
        )
        try:
            for batch in chain(own, self._worker_batches(wait=True)):
                self.rows += batch.num_rows
                yield batch
                if batch.num_rows and self._workers:
                    for ready in self._worker_batches(wait=False):
                        self.rows += ready.num_rows
                        yield ready
        except BaseException as error:
            self.error = error
            raise
        # In share order, so the account reads the same however the processes were timed.
        for worker in self._workers:
            assert worker.account is not None
            self._account.merge(worker.account)
        if progress is not None:
            progress(self.total, self.total)

    def _worker_batches(self, wait: bool) -> Iterator[pa.RecordBatch]:
        for worker in self._workers:
            while not worker.finished:
                batch = worker.next_batch(wait)
                if batch is None:
                    break
                yield _with_null_vectors(batch, self.schema)

    def report(self) -> NormalizationReport:
        """The account of the whole listing, once :meth:`batches` has been read to the end."""
        return self._account.report(
            self._decoded, time.perf_counter() - self._started, self.workers
        )


class _Worker:
    """A process normalizing one share, handing its batches over through a bounded queue."""

    # Batches a worker may finish ahead of the writer: bounds what waits in memory.
    QUEUE_BATCHES = 2
    POLL_SECONDS = 1.0

    def __init__(self, context: Any, arguments: tuple[Any, ...]) -> None:
        self.queue = context.Queue(self.QUEUE_BATCHES)
        self.process = context.Process(
            target=_normalize_share_to_queue, args=(self.queue, *arguments), daemon=True
        )
        self.finished = False
        self.account: _ShareAccount | None = None
        self.process.start()

    def next_batch(self, wait: bool) -> pa.RecordBatch | None:
        """The worker's next batch; None when none is ready without waiting, or when the
        worker has finished (and left its :attr:`account`)."""
        while True:
            try:
                kind, value = (
                    self.queue.get(timeout=self.POLL_SECONDS) if wait else (self.queue.get_nowait())
                )
            except queue.Empty:
                if self.process.is_alive():
                    if wait:
                        continue
                    return None
                raise RuntimeError(
                    "a normalizing worker process ended without finishing its share (exit "
                    f"code {self.process.exitcode}); out of memory, or killed"
                ) from None
            if kind == "batch":
                return value
            if kind == "error":
                raise RuntimeError(f"a normalizing worker process failed: {value}")
            self.finished = True
            self.account = value
            return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.queue.close()
        self.queue.cancel_join_thread()


class StreamOptions(TypedDict, total=False):
    """How to normalize a listing file: the keyword arguments of
    :func:`open_normalized_stream`, also taken by the functions built on it."""

    model_id: Required[str]
    dimensions: Required[int]
    # Where nixpkgs was evaluated from, so meta.position can be made relative to it.
    nixpkgs_root: str | None
    progress: Callable[[int, int], None] | None
    progress_every: int
    # Processes normalizing (this one included); default: one per core, at most four.
    workers: int | None
    # Listings smaller than this are normalized by this process alone.
    parallel_min_bytes: int


@contextmanager
def open_normalized_stream(
    path: Path, **options: Unpack[StreamOptions]
) -> Iterator[NormalizedStream]:
    """Decodes the listing at ``path`` and starts the workers; yields the row stream.

    Raises :class:`InvalidDumpError` on entry when the file is not a package listing. On
    exit the worker processes are gone.
    """
    model_id, dimensions = options["model_id"], options["dimensions"]
    nixpkgs_root = options.get("nixpkgs_root")
    progress = options.get("progress")
    progress_every = options.get("progress_every", 20_000)
    parallel_min_bytes = options.get("parallel_min_bytes", PARALLEL_MIN_BYTES)
    workers = options.get("workers")
    workers = default_workers() if workers is None else max(1, workers)
    # A daemonic process (a multiprocessing.Pool worker) may not start processes of its own.
    if multiprocessing.current_process().daemon or path.stat().st_size < parallel_min_bytes:
        workers = 1
    # Millions of short-lived containers would trigger a full cyclic collection every few
    # thousand rows (each traversing everything alive); nothing built here forms cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    # Spawned, not forked: the caller (a Dagster run) has threads, and fork copies their locks.
    context = multiprocessing.get_context("spawn")
    started: list[_Worker] = []
    try:
        for index in range(1, workers):
            arguments = (path, index, workers, model_id, dimensions, nixpkgs_root)
            started.append(_Worker(context, arguments))
        decoded = _decode_share(path.read_bytes())
        yield NormalizedStream(
            decoded, started, model_id, dimensions, nixpkgs_root, progress, progress_every
        )
    finally:
        for worker in started:
            worker.stop()
        if gc_was_enabled:
            gc.enable()


def normalize_listing_file(path: Path, **options: Unpack[StreamOptions]) -> NormalizedPackages:
    """:func:`normalize_listing` on a file, splitting the work over ``workers`` processes.

    Normalizing is pure Python, so one process uses one core. Every worker decodes the outer
    object itself (a fraction of a second) and normalizes one contiguous slice. The rows and
    the issues are those one process finds; the order of the rows depends on timing (each
    slice keeps its own order, see :class:`NormalizedStream`).
    """
    with open_normalized_stream(path, **options) as stream:
        table = pa.Table.from_batches(list(stream.batches()), schema=stream.schema)
        return NormalizedPackages(table=table, **vars(stream.report()))


def _normalize_share_to_queue(
    batches: Any,
    path: Path,
    index: int,
    count: int,
    model_id: str,
    dimensions: int,
    nixpkgs_root: str | None,
) -> None:
    """A worker process's part: its share of the rows, put on ``batches`` as they fill.

    Vectors are all null here; the batches leave them out rather than carry 1.5 kB of zeros
    per row between processes, and the receiving side puts them back.
    """
    gc.disable()
    try:
        decoded = _decode_share(path.read_bytes())
        account = _ShareAccount()
        for batch in _share_batches(
            decoded, index, count, model_id, dimensions, nixpkgs_root, None, BATCH_ROWS, account
        ):
            batches.put(("batch", batch.drop_columns(["vector"])))
        batches.put(("done", account))
    except BaseException as error:
        batches.put(("error", f"{type(error).__name__}: {error}"))


def _with_null_vectors(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    vector_field = schema.field("vector")
    return batch.append_column(vector_field, _null_vectors(len(batch), vector_field.type))


def _meta_json(encoder: msgspec.json.Encoder, meta: dict[str, Any], issues: Counter[str]) -> bytes:
    try:
        return encoder.encode(meta)
    except (RecursionError, msgspec.EncodeError, UnicodeEncodeError):
        issues["meta_json: could not be written back as JSON, left empty"] += 1
        return b"{}"


def _row(
    attr_path: str,
    package: _Package,
    meta: dict[str, Any],
    meta_json: bytes,
    fdnix: dict[str, Any],
    issues: Counter[str],
    nixpkgs_root: str | None,
    model_id: str,
    dimensions: int,
) -> dict[str, Any]:
    name = _text(package.name, "name", issues) or attr_path
    # The wrapper hands over the derivation's own pname/version; a plain dump only has
    # nix-env's split of `name`, which is what its pname/version fields hold.
    pname = _text(fdnix.get("pname"), "pname", issues) or _text(package.pname, "pname", issues)
    version = _string(fdnix.get("version"), "version", issues)
    if version is None:
        version = _string(package.version, "version", issues)
    if pname is None or version is None:
        split_pname, split_version = split_derivation_name(name)
        pname = pname or split_pname
        version = split_version if version is None else version

    outputs_value = package.outputs
    if isinstance(outputs_value, dict):
        outputs = [key for key in outputs_value if isinstance(key, str)]
    else:
        outputs = _string_list(outputs_value, "outputs", issues)

    description = _text(meta.get("description"), "meta.description", issues)
    long_description = _text(meta.get("longDescription"), "meta.longDescription", issues)
    main_program = _text(meta.get("mainProgram"), "meta.mainProgram", issues)
    licenses = _licenses(meta.get("license"), issues)
    known_vulnerabilities = _string_list(
        meta.get("knownVulnerabilities"), "meta.knownVulnerabilities", issues
    )

    broken = _bool(meta.get("broken"), "meta.broken", issues) or False
    insecure = _bool(meta.get("insecure"), "meta.insecure", issues)
    if insecure is None:
        insecure = bool(known_vulnerabilities)
    unfree = _bool(meta.get("unfree"), "meta.unfree", issues)
    if unfree is None:
        unfree = any(license.get("free") is False for license in licenses)
    unsupported = _bool(meta.get("unsupported"), "meta.unsupported", issues) or False
    # nixpkgs computes meta.available under the config it was evaluated with, and the wrapper's
    # config allows everything, so there it is true even for a broken package. Here it means
    # what a user needs: installable under nixpkgs' default config on this system.
    available = _bool(meta.get("available"), "meta.available", issues) is not False and not (
        broken or insecure or unfree or unsupported
    )

    text = embedding_text(attr_path, main_program, description, long_description)
    for key, value in meta.items():
        if value is None:
            issues[f"meta.{key}: null"] += 1

    return {
        "attr_path": attr_path,
        "name": name,
        "pname": pname,
        "version": version,
        "system": _text(package.system, "system", issues),
        "output_name": _text(package.outputName, "outputName", issues),
        "outputs": outputs,
        "outputs_to_install": _string_list(
            meta.get("outputsToInstall"), "meta.outputsToInstall", issues
        ),
        "description": description,
        "long_description": long_description,
        "homepages": _string_list(meta.get("homepage"), "meta.homepage", issues),
        "changelog": _text(meta.get("changelog"), "meta.changelog", issues),
        "download_page": _text(meta.get("downloadPage"), "meta.downloadPage", issues),
        "licenses": licenses,
        "maintainers": _people(meta.get("maintainers"), "meta.maintainers", issues),
        "teams": _teams(meta.get("teams"), issues),
        "platforms": _platforms(meta.get("platforms"), "meta.platforms", issues),
        "bad_platforms": _platforms(meta.get("badPlatforms"), "meta.badPlatforms", issues),
        "main_program": main_program,
        "position": relative_position(
            _text(meta.get("position"), "meta.position", issues), nixpkgs_root
        ),
        "broken": broken,
        "insecure": insecure,
        "unfree": unfree,
        "unsupported": unsupported,
        "available": available,
        "known_vulnerabilities": known_vulnerabilities,
        "source_provenance": _source_provenance(meta.get("sourceProvenance"), issues),
        "meta_json": meta_json,
        "content_hash": content_hash(text, model_id, dimensions),
        "vector": None,
    }
