"""Searching the minified dataset: the one function behind ``fdnix search``, the Lambda
handler and the benchmark.

A query is answered from four kinds of evidence, each good at what the others miss:

- **names**, matched in memory: the query equals an attribute path, its last segment, the
  package name or the main program (``git``, ``pytest``, ``rg``), or starts one (``kube``),
  compared without case or separators (``home assistant`` is ``home-assistant``);
- **typos** on names: LanceDB's fuzzy match on the name words, re-scored here by the
  optimal-string-alignment distance (a swapped pair of letters is one typo);
- **BM25** over the name words, description and long description, with names weighted most;
- **vector similarity** of the query, embedded with the model the dataset's vectors came
  from, to the packages' vectors: intent queries ("take a screenshot") share no word with
  the name. The nearest packages are candidates, and so are the most mentioned of the next
  nearest: a famous package is easily crowded out by hundreds of lookalikes.

The evidence is fused into one score per package, with small priors: packages that install
a program, that other packages' descriptions often name (popularity), or that belong to a
language ecosystem the query names ("python orm") rank higher; split-off parts (``-doc``,
``-dev``) lower. Equal scores go to healthy packages first (broken, insecure, unfree and
unsupported ones never outrank an equally good healthy package), then to the shorter
attribute path. Filters (licenses, platform, flags) are applied
inside every retrieval, before the limit.

Only lancedb, pyarrow and numpy are needed, plus :mod:`fdnix_assets.search_embedding`: this
module is shipped in the Lambda layer without the rest of the package.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import re
import sys
import threading
import time
import types
import unicodedata
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fdnix_assets.search_embedding import (
    EmbedderUnavailable,
    ModelMismatchError,
    QueryEmbedder,
    embedder_for,
)
from fdnix_assets.search_vectors import InMemoryVectors, memory_bytes

# LanceDB reads this once, when it loads: without it every query logs a warning about the
# _distance/_score columns.
os.environ.setdefault("LANCEDB_LOG", "error")

_REST_CLIENT = "lance_namespace_urllib3_client"


class _DeferredApi:
    """A class of the REST namespace client's ``api`` modules, imported when first used."""

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name

    def _real(self) -> Any:
        for loaded in [m for m in sys.modules if m.startswith(f"{_REST_CLIENT}.api")]:
            if isinstance(sys.modules[loaded], _DeferredApiModule):
                del sys.modules[loaded]
        return getattr(importlib.import_module(self._module), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._real(), attribute)


class _DeferredApiModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _DeferredApi(self.__name__, name)


def _defer_rest_namespace_client() -> None:
    """Keeps ``import lancedb`` from loading the REST namespace client's API classes.

    ``lancedb`` imports ``lance_namespace``, whose generated OpenAPI client defines every
    REST operation with pydantic validators at import time: about half of the 1.1 s
    ``import lancedb`` takes, for a client that opening a directory or an S3 URI never
    uses (nothing in lancedb or lance_namespace touches those classes). Each of its ``api``
    modules is registered as a stand-in whose classes import the real module when first
    called, so nothing breaks if something does use them.
    """
    if "lancedb" in sys.modules or _REST_CLIENT in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(_REST_CLIENT)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    api_dir = os.path.join(next(iter(spec.submodule_search_locations)), "api")
    if not os.path.isdir(api_dir):
        return
    package = _DeferredApiModule(f"{_REST_CLIENT}.api")
    package.__path__ = [api_dir]
    sys.modules[package.__name__] = package
    for entry in os.listdir(api_dir):
        if entry.endswith("_api.py"):
            name = f"{package.__name__}.{entry[:-3]}"
            sys.modules[name] = _DeferredApiModule(name)


_defer_rest_namespace_client()

import lancedb  # noqa: E402
from lancedb.query import BooleanQuery, MatchQuery, MultiMatchQuery, Occur  # noqa: E402

TABLE_NAME = "packages"
NAMES_COLUMN = "names"
NAME_KEYS_TABLE = "name_keys"
FORMAT_VERSION = "1"
STRING_LIST = pa.list_(pa.string())

# Schema metadata: the main dataset's provenance keys (same bytes as fdnix_assets.schema,
# which this module may not import) and what the minified dataset adds.
META_SOURCE = b"fdnix.source"
META_EMBEDDING_MODEL = b"fdnix.embedding_model"
META_EMBEDDING_DIMENSIONS = b"fdnix.embedding_dimensions"
META_EMBEDDING_BACKEND = b"fdnix.embedding_backend"
PROVENANCE_KEYS = frozenset(
    {
        b"fdnix.schema_version",
        META_SOURCE,
        b"fdnix.source_kind",
        b"fdnix.created_at",
        META_EMBEDDING_MODEL,
        META_EMBEDDING_DIMENSIONS,
        META_EMBEDDING_BACKEND,
    }
)
META_FORMAT = b"fdnix.minified.format"
META_PLATFORM_SETS = b"fdnix.minified.platform_sets"
META_LICENSE_ALIASES = b"fdnix.minified.license_aliases"
META_VECTOR_DIMENSIONS = b"fdnix.minified.vector_dimensions"
META_VECTOR_PROJECTION = b"fdnix.minified.vector_projection"
META_VECTOR_COUNT = b"fdnix.minified.vectors"
META_PACKAGE_SETS = b"fdnix.minified.package_sets"
MENTIONS_COLUMN = "mentions"
# Written on the vector field by fdnix_assets.embedding.vector_index with the index.
ANN_NPROBES = b"fdnix.ann.nprobes"
ANN_REFINE_FACTOR = b"fdnix.ann.refine_factor"

FLAGS = ("broken", "insecure", "unfree", "unsupported")
RESULT_COLUMNS = [
    "attr_path",
    "pname",
    "version",
    "description",
    "homepage",
    "main_program",
    "licenses",
    "maintainers",
    "position",
    *FLAGS,
]
MAX_QUERY_CHARS = 200
MAX_LIMIT = 100
MAX_OFFSET = 1_000
MAX_FILTER_VALUES = 20

# Retrieval depths: how many candidates each kind of evidence contributes.
TEXT_CANDIDATES = 40
VECTOR_CANDIDATES = 50
# How deep the retrievals go when a page reaches past the packages those depths find.
DEEP_CANDIDATES = MAX_OFFSET + MAX_LIMIT
FUZZY_CANDIDATES = 40
# Names whose pair signatures are closest to a typo'd query, checked by edit distance.
TYPO_CHECKS = 200
PREFIX_CANDIDATES = 40
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 5
# Datasets up to this many rows warm up at once (a few ms); bigger ones in a background
# thread, queries being answered the slower way until it is done.
SYNC_VECTOR_LOAD_ROWS = 20_000

# Field weights for BM25. Name words count least here: names have their own evidence
# (exact, prefix, typo), and a word that is part of many names ("irc", "git") says little
# about which of those packages a sentence means; the description says what a package does.
TEXT_BOOSTS = {NAMES_COLUMN: 0.5, "description": 1.5, "long_description": 0.6}

# How much each kind of evidence counts in the fused score (see fuse()). Measured with
# benchmarks/search_bench.py on the full fixture (dev queries and the held-out extra set,
# judged together, each reported): names dominate, the vector outweighs BM25, and BM25
# scores are relative to the query's best hit, so they only order packages that are
# otherwise alike. Linear blending beat reciprocal rank fusion (k 10-60) on both sets.
NAME_WEIGHT = 2.5
TEXT_WEIGHT = 0.05
VECTOR_WEIGHT = 0.3
# Without a query vector (a Bedrock-embedded dataset with Bedrock unreachable, or the
# benchmark's FTS-alone figure), BM25 is the only relevance evidence past names: it takes the
# vector's weight too, or the priors would outweigh it. On the full fixture's three query
# sets, FTS-alone MRR went 0.588 -> 0.725 (dev), 0.824 -> 0.829 (extra), 0.551 -> 0.596
# (fresh), recall 0.426 -> 0.452 on fresh and within 0.004 elsewhere. The same holds for a
# package without a vector of its own (a partial embedding run: Bedrock records that failed,
# or --embed-sample): with 5,000 of the full fixture's packages embedded, hybrid recall@10 /
# MRR went 0.700 / 0.550 -> 0.750 / 0.750 (dev), 0.752 / 0.768 -> 0.788 / 0.832 (extra),
# 0.427 / 0.469 -> 0.480 / 0.612 (fresh).
TEXT_ONLY_WEIGHT = TEXT_WEIGHT + VECTOR_WEIGHT
# MiniLM gives unrelated texts a cosine similarity up to ~0.4: the vector counts above that,
# and 0.7 is already as close as a package's text gets to a short query.
VECTOR_FLOOR = 0.4
VECTOR_CEILING = 0.7
# The nearest packages miss famous ones among many alike: the full fixture has hundreds of
# Python web frameworks, and django is only the 158th nearest to "python web framework".
# Of the next nearest, down to this depth and above VECTOR_FLOOR, the most mentioned (see
# POPULARITY_WEIGHT) are candidates too; they rank where their evidence puts them.
# Measured on the dev, extra and a fresh set of 40 intent queries: dev unchanged, extra and
# fresh up (django, ruff for "python linter", openscad for "3d modeling", wget).
POPULAR_NEIGHBOURS = 10
POPULAR_NEIGHBOUR_DEPTH = 300
# Priors, small next to any name match: a package that installs a program (meta.mainProgram)
# is what most searches look for, and a split-off part of another package (its docs,
# headers, data, or the unwrapped inner derivation) ranks below the package itself.
PROGRAM_BONUS = 0.1
PART_PENALTY = 0.1
# How well known a package is, from the dataset itself: how many other packages' descriptions
# name it (plugins, front ends and wrappers name what they extend: 47 mention jest, 23
# weechat, none a one-off screenshot script). Counts saturate at about 20 mentions, so
# fame orders equally relevant packages and never outweighs a better match.
POPULARITY_WEIGHT = 0.15
POPULARITY_SATURATION = 3.0  # log1p(mentions) at which the prior is full
# A query naming a language ecosystem ("python orm", "javascript test framework") means
# that ecosystem's package set: its members get this much on top of their evidence, and they
# are also retrieved on their own (see PackageSearch._ecosystem_candidates).
ECOSYSTEM_BONUS = 0.3
# Words that name an ecosystem, keyed by the word its package sets are named with
# (python313Packages -> python). The minify step records which sets the dataset has.
ECOSYSTEM_WORDS: dict[str, frozenset[str]] = {
    "python": frozenset({"python", "python3", "py"}),
    "node": frozenset({"node", "nodejs", "javascript", "js", "npm"}),
    "perl": frozenset({"perl"}),
    "ruby": frozenset({"ruby", "gem", "gems"}),
    "haskell": frozenset({"haskell", "ghc", "hackage"}),
    "lua": frozenset({"lua"}),
    "ocaml": frozenset({"ocaml", "opam"}),
    "php": frozenset({"php"}),
    "emacs": frozenset({"emacs", "elisp"}),
    "rust": frozenset({"rust", "cargo"}),
    "go": frozenset({"go", "golang"}),
    "julia": frozenset({"julia"}),
    "coq": frozenset({"coq", "rocq"}),
    "texlive": frozenset({"tex", "latex", "texlive"}),
}
PART_SUFFIX = r"-(doc|docs|dev|dbg|prof|common|data|examples|tests?|unwrapped)$"
# Name evidence below an exact match: a prefix scores by how much of the name it covers
# (``thunderb`` is most of ``thunderbird``), a typo by its edits; a query that is a prefix
# of one name and a name plus a letter (``vaultw``) is more likely being typed than mistyped.
PREFIX_BASE = 0.5
PREFIX_COVERAGE = 0.4
TYPO_BASE = 0.7
TYPO_PER_EDIT = 0.15

_WORD_SPLIT = re.compile(r"[\W_]+", re.UNICODE)
_CAMEL_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_NOT_KEY = re.compile(r"[\W_]+", re.UNICODE)
_SPACES = re.compile(r"\s+")


class SearchError(RuntimeError):
    """The dataset cannot be searched (missing, unreadable, or not a minified dataset)."""


class InvalidQuery(ValueError):
    """A query or filter the caller must change; the message says which and why."""


def vector_type(dimensions: int) -> pa.DataType:
    return pa.list_(pa.field("item", pa.float16()), dimensions)


def minified_schema(dimensions: int) -> pa.Schema:
    """The minified dataset's ``packages`` table."""
    return pa.schema(
        [
            pa.field("attr_path", pa.string(), nullable=False),
            pa.field("pname", pa.string(), nullable=False),
            pa.field("version", pa.string(), nullable=False),
            pa.field("description", pa.string()),
            pa.field("long_description", pa.string()),
            pa.field("homepage", pa.string()),
            pa.field("main_program", pa.string()),
            pa.field("licenses", STRING_LIST),
            pa.field("maintainers", STRING_LIST),
            pa.field("platform_set", pa.int16(), nullable=False),
            pa.field("position", pa.string()),
            pa.field("broken", pa.bool_(), nullable=False),
            pa.field("insecure", pa.bool_(), nullable=False),
            pa.field("unfree", pa.bool_(), nullable=False),
            pa.field("unsupported", pa.bool_(), nullable=False),
            pa.field(MENTIONS_COLUMN, pa.uint16(), nullable=False),
            pa.field(NAMES_COLUMN, pa.string(), nullable=False),
            pa.field("vector", vector_type(dimensions)),
        ]
    )


def name_words(*names: str | None) -> list[str]:
    """The words people type for a package's names, lower case, each once.

    Splits on anything not a letter or digit and on camel case and digits, keeping the whole
    part too: ``python313Packages.requests`` -> python313packages, python, packages,
    requests; ``sqlite3`` -> sqlite3, sqlite.
    """
    words: dict[str, None] = {}
    for name in names:
        if not name:
            continue
        for part in _WORD_SPLIT.split(name):
            if not part:
                continue
            words[part.lower()] = None
            for piece in _CAMEL_PARTS.findall(part):
                if not piece.isdigit():
                    words[piece.lower()] = None
    return list(words)


def name_key(text: str) -> str:
    """How a name is compared: lower case, accents and separators removed."""
    folded = unicodedata.normalize("NFKD", text.lower())
    return _NOT_KEY.sub("", "".join(c for c in folded if not unicodedata.combining(c)))


def normalize_query(query: object) -> str:
    """The query as searched: one line, single spaces; InvalidQuery when empty or too long."""
    if not isinstance(query, str):
        raise InvalidQuery("the query must be a string")
    text = _SPACES.sub(" ", "".join(c if c.isprintable() else " " for c in query)).strip()
    if not text:
        raise InvalidQuery("the query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidQuery(
            f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}"
        )
    return text


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (a swap of neighbours is one edit), capped at limit+1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous_previous: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        best = current[0]
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, previous_previous[j - 2] + 1)
            current[j] = value
            best = min(best, value)
        if best > limit:
            return limit + 1
        previous_previous, previous = previous, current
    return min(previous[-1], limit + 1)


def sql_string(value: str) -> str:
    """A SQL string literal; quotes doubled, so no value can end the literal early."""
    if "\x00" in value:
        raise InvalidQuery("filter values may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


TRI_STATE = {"include": None, "exclude": False, "only": True}


@dataclass(frozen=True)
class SearchFilters:
    """Which packages a search may return; everything when left at the defaults.

    ``licenses``: any of these (SPDX ids, nixpkgs short names or full names, any case).
    ``platform``: packages available on this system (``aarch64-darwin``), by ``meta.platforms``
    and ``meta.badPlatforms``. Flags: None includes, False excludes, True keeps only those.
    """

    licenses: tuple[str, ...] = ()
    platform: str | None = None
    broken: bool | None = None
    insecure: bool | None = None
    unfree: bool | None = None
    unsupported: bool | None = None

    @property
    def is_empty(self) -> bool:
        return self == SearchFilters()

    def flag_values(self) -> dict[str, bool]:
        return {name: value for name in FLAGS if (value := getattr(self, name)) is not None}


@dataclass
class SearchResult:
    attr_path: str
    pname: str
    version: str
    description: str | None
    score: float
    homepage: str | None = None
    main_program: str | None = None
    licenses: list[str] = field(default_factory=list)
    maintainers: list[str] = field(default_factory=list)
    position: str | None = None
    broken: bool = False
    insecure: bool = False
    unfree: bool = False
    unsupported: bool = False
    matched: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResponse:
    """Results best first, plus how they were found."""

    query: str
    results: list[SearchResult]
    mode: str
    note: str | None = None
    offset: int = 0
    limit: int = 10
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "note": self.note,
            "offset": self.offset,
            "limit": self.limit,
            "results": [result.as_dict() for result in self.results],
        }


@dataclass
class _Gathered:
    """The candidates of one search with their evidence, and how they were found."""

    evidence: dict[int, _Evidence]
    mode: str
    note: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Evidence:
    name: float = 0.0
    text: float = 0.0
    vector: float = 0.0
    matched: set[str] = field(default_factory=set)

    def absorb(self, other: _Evidence) -> None:
        """Keeps the stronger of each kind of evidence, and every way it was found."""
        self.name = max(self.name, other.name)
        self.text = max(self.text, other.text)
        self.vector = max(self.vector, other.vector)
        self.matched |= other.matched


@dataclass(frozen=True)
class VectorProjection:
    """A PCA projection: ``(v - mean) @ components``, then unit length. The minify step fits
    it and records it in the schema metadata; search applies it to each query vector."""

    mean: np.ndarray
    components: np.ndarray

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Projects one vector or a matrix of them (one per row)."""
        projected = (vectors - self.mean) @ self.components
        norms = np.linalg.norm(projected, axis=-1, keepdims=True)
        return projected / np.maximum(norms, 1e-12)

    def to_metadata(self) -> bytes:
        import base64

        return json.dumps(
            {
                "mean": base64.b64encode(self.mean.astype("<f4").tobytes()).decode(),
                "components": base64.b64encode(self.components.astype("<f4").tobytes()).decode(),
                "shape": list(self.components.shape),
            }
        ).encode()

    @classmethod
    def from_metadata(cls, raw: bytes) -> VectorProjection:
        import base64

        data = json.loads(raw)
        shape = tuple(data["shape"])
        mean = np.frombuffer(base64.b64decode(data["mean"]), dtype="<f4")
        components = np.frombuffer(base64.b64decode(data["components"]), dtype="<f4")
        return cls(mean=mean, components=components.reshape(shape))


# Name-key kinds (attribute path, its last part, package name, program) as typo kinds
# (see _typo_score): a whole attribute path counts as the path's own name.
_TYPO_KIND_ORDER = (0, 0, 1, 2)


class _NameIndex:
    """Every name of every package as a comparison key, sorted, for exact and prefix lookup.

    Built by the minify step (table :data:`NAME_KEYS_TABLE`), so opening costs one read.
    """

    KIND_ATTR_PATH, KIND_LAST_SEGMENT, KIND_PNAME, KIND_PROGRAM = range(4)
    # How good an exact match on each kind of name is.
    EXACT_SCORES = (1.0, 0.96, 0.93, 0.9)

    def __init__(self, table: pa.Table) -> None:
        self.keys: pa.StringArray = table["key"].combine_chunks()
        self.rows = table["row"].to_numpy()
        self.kinds = table["kind"].to_numpy()
        self.key_lengths = pc.utf8_length(self.keys).to_numpy(zero_copy_only=False)
        # Datasets minified before the signatures existed use LanceDB's fuzzy match instead.
        self.grams: np.ndarray | None = (
            table["grams"].to_numpy() if "grams" in table.column_names else None
        )
        self.gram_counts = np.bitwise_count(self.grams) if self.grams is not None else None

    def typos(self, key: str, allowed: int, count: int) -> list[tuple[int, int, int]]:
        """(row, kind, edits) of names at most ``allowed`` edits (OSA) from ``key``.

        Candidates differ in length by at most ``allowed`` and in at most three
        neighbouring-character pairs per edit each way (see :func:`bigram_signature`); the
        ``count`` whose signatures differ least are checked.
        """
        assert self.grams is not None and self.gram_counts is not None
        signature = np.uint32(bigram_signature(key))
        shared = np.bitwise_count(self.grams & signature)
        query_only = int(np.bitwise_count(signature)) - shared
        name_only = self.gram_counts - shared
        close = (
            (query_only <= 3 * allowed)
            & (name_only <= 3 * allowed)
            & (np.abs(self.key_lengths - len(key)) <= allowed)
        )
        candidates = np.flatnonzero(close)
        if len(candidates) > count:
            difference = query_only[candidates] + name_only[candidates]
            candidates = candidates[np.argpartition(difference, count)[:count]]
        found = []
        for position in candidates.tolist():
            distance = osa_distance(key, self.keys[position].as_py(), allowed)
            if 0 < distance <= allowed:
                found.append((int(self.rows[position]), int(self.kinds[position]), distance))
        return found

    def _bisect(self, target: str) -> int:
        low, high = 0, len(self.keys)
        keys = self.keys
        while low < high:
            middle = (low + high) // 2
            if keys[middle].as_py() < target:
                low = middle + 1
            else:
                high = middle
        return low

    def exact(self, key: str) -> list[tuple[int, int]]:
        """(row, kind) of every name equal to ``key``."""
        start = self._bisect(key)
        found = []
        position = start
        while position < len(self.keys) and self.keys[position].as_py() == key:
            found.append((int(self.rows[position]), int(self.kinds[position])))
            position += 1
        return found

    def prefixed(self, key: str, count: int) -> list[tuple[int, int, int]]:
        """(row, kind, name length) of the ``count`` shortest names starting with ``key``."""
        start = self._bisect(key)
        end = self._bisect(key + "\U0010ffff")
        if end <= start:
            return []
        lengths = self.key_lengths[start:end]
        if end - start > count:
            chosen = np.argpartition(lengths, count)[:count]
        else:
            chosen = np.arange(end - start)
        return [
            (int(self.rows[start + i]), int(self.kinds[start + i]), int(lengths[i])) for i in chosen
        ]


def bigram_signature(key: str) -> int:
    """32 bits, one per hashed pair of neighbouring characters of ``^key$``.

    Two names a few typos apart share most of their pairs: each edit changes at most three
    (a swap of neighbours ``ab`` -> ``ba`` replaces ``xa``, ``ab``, ``by``), so the typo
    lookup compares these bits across every name at once and checks only the few that pass.
    (64 bits filtered a little better but cost 0.7 MB more of the layer's size budget.)
    """
    padded = f"^{key}$"
    bits = 0
    for first, second in itertools.pairwise(padded):
        bits |= 1 << ((ord(first) * 31 + ord(second)) % 32)
    return bits


def name_keys_table(
    attr_paths: Sequence[str], pnames: Sequence[str | None], programs: Sequence[str | None]
) -> pa.Table:
    """The sorted name keys of :class:`_NameIndex` (built once, by the minify step)."""
    keys: list[str] = []
    rows: list[int] = []
    kinds: list[int] = []
    for row, (attr_path, pname, program) in enumerate(
        zip(attr_paths, pnames, programs, strict=True)
    ):
        names = (attr_path, attr_path.rsplit(".", 1)[-1], pname, program)
        seen: set[str] = set()
        for kind, name in enumerate(names):
            if not name:
                continue
            key = name_key(name)
            if key and key not in seen:
                seen.add(key)
                keys.append(key)
                rows.append(row)
                kinds.append(kind)
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "row": pa.array(rows, pa.int32()),
            "kind": pa.array(kinds, pa.int8()),
            "grams": pa.array([bigram_signature(k) for k in keys], pa.uint32()),
        }
    )
    return table.take(pc.sort_indices(table, [("key", "ascending"), ("kind", "ascending")]))


class PackageSearch:
    """An open minified dataset, ready to answer queries (thread-safe, reuse it)."""

    def __init__(
        self,
        table: Any,
        name_keys: pa.Table,
        uri: str,
        embedder: QueryEmbedder | None = None,
        embedder_note: str | None = None,
    ) -> None:
        self.table = table
        self.uri = uri
        schema = table.schema
        metadata: Mapping[bytes, bytes] = schema.metadata or {}
        missing = [n for n in (NAMES_COLUMN, "platform_set", "vector") if n not in schema.names]
        if missing or META_FORMAT not in metadata:
            raise SearchError(
                f"{uri} is not an fdnix minified dataset (table {TABLE_NAME!r} lacks "
                f"{', '.join(missing) or 'the minified format marker'})"
            )
        self.model_id = metadata.get(META_EMBEDDING_MODEL, b"").decode()
        self.backend = metadata.get(META_EMBEDDING_BACKEND, b"").decode()
        self.model_dimensions = int(metadata.get(META_EMBEDDING_DIMENSIONS, b"0") or 0)
        self.vector_dimensions = schema.field("vector").type.list_size
        self.projection = (
            VectorProjection.from_metadata(metadata[META_VECTOR_PROJECTION])
            if META_VECTOR_PROJECTION in metadata
            else None
        )
        expected = self.projection.components.shape[1] if self.projection else self.model_dimensions
        if self.model_dimensions and self.vector_dimensions != expected:
            raise SearchError(
                f"{uri}: the vector column has {self.vector_dimensions} dimensions but the "
                f"dataset records {self.model_id} with {self.model_dimensions}"
                + (f" projected to {expected}" if self.projection else "")
            )
        self.platform_sets: list[dict[str, list[str]]] = json.loads(
            metadata.get(META_PLATFORM_SETS, b"[]")
        )
        self.license_aliases: dict[str, str] = json.loads(metadata.get(META_LICENSE_ALIASES, b"{}"))
        self.has_vector_index = any("vector" in index.columns for index in table.list_indices())
        self.vector_count = int(metadata.get(META_VECTOR_COUNT, b"0") or 0)
        vector_metadata = schema.field("vector").metadata or {}
        self.nprobes = int(vector_metadata.get(ANN_NPROBES, DEFAULT_NPROBES))
        self.refine_factor = int(vector_metadata.get(ANN_REFINE_FACTOR, DEFAULT_REFINE_FACTOR))

        # What results show and what ranking and filters read stays in memory (about 35 MB
        # for 120k packages): fetching it per query from the table costs more than a search.
        ranking_columns = ["platform_set"]
        if MENTIONS_COLUMN in schema.names:
            ranking_columns.append(MENTIONS_COLUMN)
        loaded = (
            table.search()
            .select([*RESULT_COLUMNS, *ranking_columns])
            .with_row_id(True)
            .limit(None)
            .to_arrow()
        )
        self.row_ids = loaded["_rowid"].to_numpy()
        self.rows = len(self.row_ids)
        self.identity_row_ids = bool(np.array_equal(self.row_ids, np.arange(self.rows)))
        self.columns = {name: loaded[name].combine_chunks() for name in RESULT_COLUMNS}
        self.names = _NameIndex(name_keys)
        if len(self.names.rows) and int(self.names.rows.max()) >= self.rows:
            raise SearchError(f"{uri}: the {NAME_KEYS_TABLE} table does not match {TABLE_NAME}")
        self.attr_path_lengths = pc.utf8_length(self.columns["attr_path"]).to_numpy()
        self.flags = {name: self.columns[name].to_numpy(zero_copy_only=False) for name in FLAGS}
        self.flagged = np.logical_or.reduce([self.flags[name] for name in FLAGS])
        self.has_program = pc.is_valid(self.columns["main_program"]).to_numpy(zero_copy_only=False)
        self.is_part = pc.match_substring_regex(self.columns["attr_path"], PART_SUFFIX).to_numpy(
            zero_copy_only=False
        )
        self.platform_column = loaded["platform_set"].to_numpy()
        self.mentions = (
            loaded[MENTIONS_COLUMN].to_numpy()
            if MENTIONS_COLUMN in loaded.column_names
            else np.zeros(self.rows, dtype=np.uint16)
        )
        self.popularity = popularity_prior(self.mentions)
        self.package_sets: dict[str, str] = json.loads(metadata.get(META_PACKAGE_SETS, b"{}"))
        self.ecosystem_members: dict[str, np.ndarray] = {}
        for prefix, ecosystem in self.package_sets.items():
            members = pc.starts_with(self.columns["attr_path"], prefix + ".").to_numpy(
                zero_copy_only=False
            )
            known = self.ecosystem_members.get(ecosystem)
            self.ecosystem_members[ecosystem] = members if known is None else known | members
        # A dataset written before the vector count was recorded is taken as fully embedded.
        self.partly_embedded = META_VECTOR_COUNT in metadata and self.vector_count < self.rows
        self.text_weights = np.full(self.rows, TEXT_WEIGHT)
        if self.partly_embedded:
            self.text_weights[~self._rows_with_vectors()] = TEXT_ONLY_WEIGHT
        self._mask_cache: dict[SearchFilters, tuple[np.ndarray | None, str | None]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fdnix-search")
        self._memory_vectors: InMemoryVectors | None = None
        self._warm_up_thread: threading.Thread | None = None
        self._warm_up_started = False
        self._memory_budget_bytes: int | None = None
        self._warm = False
        self.warm_up_errors: list[str] = []

        self.embedder = embedder
        self.embedder_note = embedder_note
        if embedder is not None:
            self.check_embedder(embedder)

    def _rows_with_vectors(self) -> np.ndarray:
        """Which packages have a vector; read only for a partly embedded dataset (about
        15 ms for 120k packages: the filter reads the vector column's validity)."""
        present = np.zeros(self.rows, dtype=bool)
        if self.vector_count:
            hits = (
                self.table.search()
                .where("vector IS NOT NULL")
                .select(["platform_set"])
                .with_row_id(True)
                .limit(None)
                .to_arrow()
            )
            present[self._rows_of(hits["_rowid"])] = True
        return present

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        uri: str,
        storage_options: Mapping[str, str] | None = None,
        embedder: QueryEmbedder | None = None,
        auto_embedder: bool = True,
        warm_up: bool = False,
    ) -> PackageSearch:
        """Opens the minified dataset at ``uri`` (a directory or ``s3://`` URI).

        Without an ``embedder``, picks the one the dataset's provenance names; when that is
        impossible here (no model files, no credentials), searches use the text indexes
        only and every response says so.

        ``warm_up`` is for processes that answer many queries (the Lambda handler,
        ``fdnix search -``): see :meth:`warm_up`.
        """
        if "://" not in uri:
            # A local dataset path is usually the store's symbolic link to the latest
            # snapshot. Opening the snapshot itself keeps a long-lived reader (a Lambda
            # container, `fdnix search -`) on the files it opened when the link moves on.
            uri = os.path.realpath(uri)
        try:
            db = lancedb.connect(uri, storage_options=dict(storage_options or {}) or None)
            table = db.open_table(TABLE_NAME)
            name_keys = db.open_table(NAME_KEYS_TABLE).to_arrow()
        except Exception as error:
            raise SearchError(
                f"cannot open the minified dataset at {uri}: {type(error).__name__}: {error}"
            ) from None
        search = cls(table, name_keys, uri, embedder=embedder)
        if embedder is None and auto_embedder:
            search._choose_embedder()
        elif embedder is None:
            search.embedder_note = "query embedding disabled; results come from text indexes"
        if warm_up:
            search.warm_up()
        return search

    # -- warming up ------------------------------------------------------------------------

    def warm_up(
        self, background: bool | None = None, memory_budget_bytes: int | None = None
    ) -> None:
        """Prepares a process that answers many queries (a Lambda container, ``fdnix search -``).

        Two things, each about halving its part of a query: the query embedder moves to ONNX
        Runtime (:meth:`MiniLMQueryEmbedder.compile`, about 200 ms), and the vectors move
        into memory (:mod:`fdnix_assets.search_vectors`; about 190 MB and a second for the
        full fixture), so vector search skips LanceDB. By default this runs in a background
        thread above :data:`SYNC_VECTOR_LOAD_ROWS` rows, queries being answered the slower
        way meanwhile; :meth:`wait_until_warm` waits for it. What fails is recorded in
        :attr:`warm_up_errors` and leaves that part as it was, and so are vectors that would
        take more than ``memory_budget_bytes`` (:func:`search_vectors.memory_bytes`: 1,024
        Titan dimensions need 2.7 times what 384 MiniLM ones do).
        """
        if self._warm_up_started or self.embedder is None:
            return
        self._warm_up_started = True
        self._memory_budget_bytes = memory_budget_bytes
        if background is None:
            background = self.rows > SYNC_VECTOR_LOAD_ROWS
        if not background:
            self._warm_up()
            return
        self._warm_up_thread = threading.Thread(
            target=self._warm_up, name="fdnix-search-warm-up", daemon=True
        )
        self._warm_up_thread.start()

    def wait_until_warm(self, timeout: float | None = None) -> bool:
        """Waits for :meth:`warm_up`; whether it has finished."""
        if self._warm_up_thread is not None:
            self._warm_up_thread.join(timeout)
        return self._warm

    @property
    def vector_backend(self) -> str:
        """Where vector search runs now: ``memory`` or ``lancedb``."""
        return "memory" if self._memory_vectors is not None else "lancedb"

    def _warm_up(self) -> None:
        compile_embedder = getattr(self.embedder, "compile", None)
        if compile_embedder is not None and not compile_embedder():
            self.warm_up_errors.append(
                f"query embedder: {getattr(self.embedder, 'compile_error', 'not compiled')}"
            )
        needed = memory_bytes(self.rows, self.vector_dimensions)
        budget = self._memory_budget_bytes
        if self.vector_count and budget is not None and needed > budget:
            self.warm_up_errors.append(
                f"vectors: holding them takes {needed / 1e6:,.0f} MB, over the "
                f"{budget / 1e6:,.0f} MB budget; LanceDB's index answers"
            )
        elif self.vector_count:
            try:
                loaded = (
                    self.table.search().select(["vector"]).with_row_id(True).limit(None).to_arrow()
                )
                if not np.array_equal(loaded["_rowid"].to_numpy(), self.row_ids):
                    raise SearchError("the vector column came back in another row order")
                self._memory_vectors = InMemoryVectors.from_arrow(loaded["vector"])
            except Exception as error:  # anything: LanceDB's index keeps answering
                self.warm_up_errors.append(f"vectors: {type(error).__name__}: {error}")
        self._warm = True

    def _choose_embedder(self) -> None:
        if not self.model_id:
            self.embedder_note = "the dataset records no embedding model; text indexes only"
            return
        if self.vector_count == 0:
            self.embedder_note = "the dataset holds no vectors yet; text indexes only"
            return
        try:
            self.embedder = embedder_for(self.model_id, self.model_dimensions, self.backend)
        except (EmbedderUnavailable, ModelMismatchError) as error:
            self.embedder = None
            self.embedder_note = (
                f"no query embedding for {self.model_id} here ({error}); "
                "results come from the text indexes only"
            )

    def check_embedder(self, embedder: QueryEmbedder) -> None:
        """Refuses a query embedder whose model or dimension differs from the dataset's."""
        if embedder.model_id != self.model_id or embedder.dimensions != self.model_dimensions:
            raise ModelMismatchError(
                f"the dataset at {self.uri} was embedded with {self.model_id or 'no model'} "
                f"({self.model_dimensions} dimensions); the query embedder is "
                f"{embedder.model_id} ({embedder.dimensions} dimensions). Query vectors from "
                "another model are meaningless against these vectors."
            )

    def close(self) -> None:
        # A warm-up thread still reading through LanceDB when the interpreter exits can
        # crash it: let it finish first.
        if self._warm_up_thread is not None:
            self._warm_up_thread.join()
        self._pool.shutdown(wait=False)

    # -- filters ---------------------------------------------------------------------------

    def resolve_filters(self, filters: SearchFilters) -> tuple[np.ndarray | None, str | None]:
        """The rows a filter allows (mask) and the same condition as a LanceDB prefilter.

        Values are checked against what the dataset holds; the SQL is built from those
        dataset values (escaped), never from the caller's text.
        """
        if filters.is_empty:
            return None, None
        with self._lock:
            cached = self._mask_cache.get(filters)
        if cached is not None:
            return cached
        mask = np.ones(self.rows, dtype=bool)
        clauses = []
        if filters.licenses:
            labels = self._license_labels(filters.licenses)
            clauses.append(
                "array_has_any(licenses, [" + ", ".join(sql_string(x) for x in labels) + "])"
            )
            mask &= self._license_mask(labels)
        if filters.platform is not None:
            numbers = self._platform_set_numbers(filters.platform)
            clauses.append(
                "platform_set IN (" + ", ".join(str(n) for n in numbers) + ")"
                if numbers
                else "false"
            )
            mask &= np.isin(self.platform_column, numbers)
        for name, wanted in filters.flag_values().items():
            clauses.append(name if wanted else f"NOT {name}")
            mask &= self.flags[name] == wanted
        result = (mask, " AND ".join(f"({c})" for c in clauses))
        with self._lock:
            if len(self._mask_cache) > 64:
                self._mask_cache.clear()
            self._mask_cache[filters] = result
        return result

    def _license_labels(self, values: Sequence[str]) -> list[str]:
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidQuery(f"at most {MAX_FILTER_VALUES} licenses may be given")
        labels = []
        for value in values:
            label = self.license_aliases.get(value.strip().lower())
            if label is None:
                raise InvalidQuery(
                    f"unknown license {value[:60]!r}: use an SPDX id or nixpkgs short name "
                    "that occurs in the dataset (for example MIT, GPL-3.0-or-later, asl20)"
                )
            if label not in labels:
                labels.append(label)
        return labels

    def _license_mask(self, labels: list[str]) -> np.ndarray:
        licenses = self.columns["licenses"]
        flat = pc.list_flatten(licenses)
        parents = pc.list_parent_indices(licenses).to_numpy()
        hits = pc.is_in(flat, value_set=pa.array(labels)).to_numpy(zero_copy_only=False)
        mask = np.zeros(self.rows, dtype=bool)
        mask[parents[hits]] = True
        return mask

    def known_platforms(self) -> set[str]:
        return {p for entry in self.platform_sets for p in entry["platforms"]}

    def _platform_set_numbers(self, platform: str) -> list[int]:
        value = platform.strip()
        known = self.known_platforms()
        if value not in known:
            raise InvalidQuery(
                f"unknown platform {value[:60]!r}: use a Nix system such as x86_64-linux or "
                "aarch64-darwin"
            )
        return [
            number
            for number, entry in enumerate(self.platform_sets)
            if (not entry["platforms"] or value in entry["platforms"])
            and value not in entry["bad_platforms"]
        ]

    # -- searching -------------------------------------------------------------------------

    def search(
        self,
        query: str,
        limit: int = 10,
        offset: int = 0,
        filters: SearchFilters | None = None,
        use_vectors: bool = True,
        use_text: bool = True,
        use_names: bool = True,
    ) -> SearchResponse:
        """The packages best matching ``query``, best first, after ``offset``, at most ``limit``.

        ``use_vectors`` / ``use_text`` / ``use_names`` switch kinds of evidence off (the
        benchmark measures each alone); by default all of them count.
        """
        started = time.perf_counter()
        text = normalize_query(query)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidQuery(f"offset must be between 0 and {MAX_OFFSET}, not {offset}")
        mask, where = self.resolve_filters(filters or SearchFilters())
        wanted = offset + limit
        ecosystems = self._ecosystems_named(text)
        kinds = {"vector": use_vectors, "text": use_text, "names": use_names}
        # The ecosystem's own candidates are gathered beside the others (a leaf of the pool's
        # work waits only on leaves, so the pool cannot deadlock).
        in_ecosystems = (
            self._pool.submit(self._ecosystem_candidates, text, ecosystems, mask, where, kinds)
            if ecosystems
            else None
        )
        found = self._gather(
            text,
            mask,
            where,
            kinds,
            TEXT_CANDIDATES,
            VECTOR_CANDIDATES,
            popular_neighbours=POPULAR_NEIGHBOURS,
        )
        scoped = in_ecosystems.result() if in_ecosystems is not None else None
        if scoped is not None:
            found.timings["ecosystem"] = scoped.timings["total"]
            for row, extra in scoped.evidence.items():
                found.evidence.setdefault(row, _Evidence()).absorb(extra)
        text_only = found.mode == "text"
        ranked = self._rank(found.evidence, ecosystems, text_only)
        if len(ranked) < wanted and found.evidence:
            # Past what the usual depths find: retrieve deeper and rank the packages that
            # adds after the others. The first packages are scored from the same evidence
            # whatever the limit, so a bigger page or the next one never reorders them.
            deeper = self._gather(
                text, mask, where, {**kinds, "names": False}, DEEP_CANDIDATES, DEEP_CANDIDATES
            )
            found.timings["deeper"] = deeper.timings["total"]
            added = {r: e for r, e in deeper.evidence.items() if r not in found.evidence}
            ranked += self._rank(added, ecosystems, text_only)
            found.evidence.update(added)
        page = ranked[offset : offset + limit]
        results = self._materialize(page, found.evidence)
        found.timings["total"] = _ms(started)
        return SearchResponse(
            query=text,
            results=results,
            mode=found.mode,
            note=found.note,
            offset=offset,
            limit=limit,
            timings_ms=found.timings,
        )

    def _gather(
        self,
        text: str,
        mask: np.ndarray | None,
        where: str | None,
        kinds: Mapping[str, bool],
        text_depth: int,
        vector_depth: int,
        package_sets: Sequence[str] = (),
        popular_neighbours: int = 0,
    ) -> _Gathered:
        """Every candidate package with its evidence, from the kinds of evidence asked for.

        With ``package_sets``, only their members are candidates (``mask`` must already
        hold that restriction; ``where`` is the caller's filter alone). The vector adds up to
        ``popular_neighbours`` packages past its depth (see POPULAR_NEIGHBOURS).
        """
        started = time.perf_counter()
        found = _Gathered(evidence={}, mode="hybrid" if kinds["vector"] else "text")
        if kinds["vector"] and self.embedder is None:
            found.mode = "text"
            found.note = self.embedder_note or "no query embedding available; text indexes only"
        if mask is not None and not mask.any():
            found.timings["total"] = _ms(started)
            return found
        evidence = found.evidence
        # LanceDB runs each query in Rust without the GIL: the vector search (with the query
        # embedding), BM25 and the typo lookup overlap.
        futures: dict[str, Future[Any]] = {}
        if found.mode == "hybrid":
            vector_where = where
            if package_sets:
                scope = " OR ".join(
                    f"starts_with(attr_path, {sql_string(p + '.')})" for p in package_sets
                )
                vector_where = f"({scope})" + (f" AND ({where})" if where else "")
            futures["vector"] = self._pool.submit(
                _timed,
                self._vector_candidates,
                text,
                vector_where,
                mask,
                vector_depth,
                popular_neighbours,
            )
        if kinds["text"]:
            futures["text"] = self._pool.submit(
                _timed, self._text_candidates, text, where, text_depth, package_sets
            )
        if kinds["names"]:
            mark = time.perf_counter()
            exact_found, prefix_found = self._name_candidates(text, mask, evidence)
            found.timings["names"] = _ms(mark)
            # A name the query equals or begins is what was meant; typos are looked for only
            # when neither exists (the fuzzy lookup is the slowest part of a search).
            if not (exact_found or prefix_found) and _fuzzy_eligible(text):
                futures["typo"] = self._pool.submit(
                    _timed, self._typo_candidates, text, where, mask
                )
        for kind, future in futures.items():
            try:
                hits, milliseconds = future.result()
            except EmbedderUnavailable as error:
                found.mode = "text"
                found.note = f"query embedding failed ({error}); text indexes only"
                continue
            found.timings[kind] = milliseconds
            for row, value in hits:
                if package_sets and mask is not None and not mask[row]:
                    continue  # a name that merely looks like a set member's
                entry = evidence.setdefault(row, _Evidence())
                entry.matched.add("semantic" if kind == "vector" else kind)
                if kind == "vector":
                    entry.vector = max(entry.vector, value)
                elif kind == "text":
                    entry.text = max(entry.text, value)
                else:
                    entry.name = max(entry.name, value)
        found.timings["total"] = _ms(started)
        return found

    def _ecosystem_candidates(
        self,
        text: str,
        ecosystems: Sequence[str],
        mask: np.ndarray | None,
        where: str | None,
        kinds: Mapping[str, bool],
    ) -> _Gathered | None:
        """What BM25 and the vector find among the named ecosystems' packages alone.

        Searched over every package, "javascript test framework" fills the candidates with
        test frameworks of all languages, and the JavaScript ones that say "testing
        framework" may not make the cut. Within the ecosystem the words naming it tell
        packages apart no more than "the" does, so they are left out of this query.
        """
        rest = without_words(text, frozenset().union(*(ECOSYSTEM_WORDS[e] for e in ecosystems)))
        if not rest:
            return None
        members = np.logical_or.reduce([self.ecosystem_members[e] for e in ecosystems])
        return self._gather(
            rest,
            members if mask is None else members & mask,
            where,
            {**kinds, "names": False},
            TEXT_CANDIDATES,
            VECTOR_CANDIDATES,
            package_sets=[p for p, e in self.package_sets.items() if e in ecosystems],
            popular_neighbours=POPULAR_NEIGHBOURS,
        )

    def _name_candidates(
        self, text: str, mask: np.ndarray | None, evidence: dict[int, _Evidence]
    ) -> tuple[bool, bool]:
        """Exact and prefix name matches, straight into ``evidence``; whether there were any."""
        key = name_key(text)
        if not key:
            return False, False
        exact_found = prefix_found = False
        for row, kind in self.names.exact(key):
            if mask is not None and not mask[row]:
                continue
            entry = evidence.setdefault(row, _Evidence())
            entry.name = max(entry.name, _NameIndex.EXACT_SCORES[kind])
            entry.matched.add("exact")
            exact_found = True
        if len(key) >= 2:
            for row, kind, length in self.names.prefixed(key, PREFIX_CANDIDATES):
                if length == len(key) or (mask is not None and not mask[row]):
                    continue
                coverage = len(key) / length
                score = PREFIX_BASE + PREFIX_COVERAGE * coverage - 0.02 * kind
                entry = evidence.setdefault(row, _Evidence())
                entry.name = max(entry.name, score)
                entry.matched.add("prefix")
                prefix_found = True
        return exact_found, prefix_found

    def _typo_candidates(
        self, text: str, where: str | None, mask: np.ndarray | None
    ) -> list[tuple[int, float]]:
        """Names one or two edits away (OSA), scored by edits and which kind of name it is.

        Found in memory by the name keys' pair signatures; datasets minified without them
        ask LanceDB's fuzzy match on the name words instead (about 10 ms slower).
        """
        key = name_key(text)
        allowed = 1 if len(key) <= 5 else 2
        if self.names.grams is not None:
            best: dict[int, float] = {}
            for row, kind, distance in self.names.typos(key, allowed, TYPO_CHECKS):
                if mask is not None and not mask[row]:
                    continue
                score = _typo_score(key, distance, _TYPO_KIND_ORDER[kind])
                if score > best.get(row, -1.0):
                    best[row] = score
            return list(best.items())
        # Levenshtein counts a swap as two edits; OSA below counts it as one.
        query = MatchQuery(text.lower(), NAMES_COLUMN, fuzziness=2, max_expansions=100)
        builder = self.table.search(query, query_type="fts")
        hits = _fetch(
            builder, where, FUZZY_CANDIDATES, ["attr_path", "pname", "main_program", "_score"]
        )
        found = []
        for row, attr_path, pname, program in zip(
            self._rows_of(hits["_rowid"]).tolist(),
            hits["attr_path"].to_pylist(),
            hits["pname"].to_pylist(),
            hits["main_program"].to_pylist(),
            strict=True,
        ):
            # The attribute path's own name first, then the package name, then the program:
            # "postgersql" means postgresql more than postgresql_15 named "postgresql".
            names = (attr_path.rsplit(".", 1)[-1], pname, program)
            distance, kind = min(
                (osa_distance(key, name_key(n), allowed), kind) for kind, n in enumerate(names) if n
            )
            if distance > allowed or (mask is not None and not mask[row]):
                continue
            found.append((row, _typo_score(key, distance, kind)))
        return found

    def _text_candidates(
        self, text: str, where: str | None, depth: int, package_sets: Sequence[str] = ()
    ) -> list[tuple[int, float]]:
        """BM25 over names, description and long description, relative to the best hit.

        With ``package_sets``, only their members match: each member's names hold its set's
        name, which the names index finds without the slower prefilter on the attribute path.
        """
        columns = list(TEXT_BOOSTS)
        query: Any = MultiMatchQuery(text, columns, boosts=[TEXT_BOOSTS[c] for c in columns])
        if package_sets:
            in_sets = MatchQuery(" ".join(p.lower() for p in package_sets), NAMES_COLUMN)
            query = BooleanQuery([(Occur.MUST, in_sets), (Occur.SHOULD, query)])
        builder = self.table.search(query, query_type="fts")
        hits = _fetch(builder, where, depth, ["_score"])
        if hits.num_rows == 0:
            return []
        scores = hits["_score"].to_numpy()
        top = float(scores.max()) or 1.0
        relative = (scores.astype(np.float64) / top).tolist()
        return list(zip(self._rows_of(hits["_rowid"]).tolist(), relative, strict=True))

    def _vector_candidates(
        self,
        text: str,
        where: str | None,
        mask: np.ndarray | None,
        depth: int,
        popular_neighbours: int = 0,
    ) -> list[tuple[int, float]]:
        """The ``depth`` nearest packages to the query's embedding, with their cosine
        similarity, and the ``popular_neighbours`` most mentioned of the next nearest.

        From memory once :meth:`warm_up` has loaded them, else from LanceDB's index.
        """
        assert self.embedder is not None
        vector = self.embedder.embed(text)
        if vector.shape != (self.model_dimensions,):
            raise ModelMismatchError(
                f"the query embedder returned {vector.shape[0]} dimensions; the dataset's "
                f"model has {self.model_dimensions}"
            )
        if self.projection is not None:
            vector = self.projection.apply(vector)
        vector = vector.astype(np.float32, copy=False)
        wanted = max(depth, POPULAR_NEIGHBOUR_DEPTH) if popular_neighbours else depth
        memory = self._memory_vectors
        if memory is not None:
            rows, similarities = memory.nearest(vector, wanted, mask)
        else:
            builder = self.table.search(vector, vector_column_name="vector")
            builder = builder.distance_type("cosine")
            if self.has_vector_index:
                builder = builder.nprobes(self.nprobes).refine_factor(self.refine_factor)
            hits = _fetch(builder, where, wanted, ["_distance"])
            rows = self._rows_of(hits["_rowid"])
            similarities = 1.0 - hits["_distance"].to_numpy()
        chosen = np.arange(min(depth, len(rows)))
        if popular_neighbours and len(rows) > depth:
            next_nearest = np.arange(depth, len(rows))
            mentions = self.mentions[rows[next_nearest]].astype(np.int64)
            close = (similarities[next_nearest] >= VECTOR_FLOOR) & (mentions > 0)
            next_nearest, mentions = next_nearest[close], mentions[close]
            # Most mentioned first, then nearest (the order they came in).
            order = np.argsort(-mentions, kind="stable")[:popular_neighbours]
            chosen = np.concatenate([chosen, next_nearest[order]])
        return list(zip(rows[chosen].tolist(), similarities[chosen].tolist(), strict=True))

    def _rows_of(self, row_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The in-memory rows of LanceDB row ids (the same numbers unless rows were deleted)."""
        ids = row_ids.to_numpy().astype(np.int64, copy=False)
        return ids if self.identity_row_ids else np.searchsorted(self.row_ids, ids)

    def _ecosystems_named(self, text: str) -> list[str]:
        """The language ecosystems of this dataset that the query names by a word."""
        words = set(_WORD_SPLIT.split(text.lower()))
        return [
            ecosystem
            for ecosystem in self.ecosystem_members
            if words & ECOSYSTEM_WORDS.get(ecosystem, frozenset())
        ]

    def _rank(
        self,
        evidence: dict[int, _Evidence],
        ecosystems: Sequence[str] = (),
        text_only: bool = False,
    ) -> list[tuple[int, float]]:
        """Candidates best first, with their scores; ``text_only`` when there was no query
        vector (see TEXT_ONLY_WEIGHT)."""
        if not evidence:
            return []
        rows = np.fromiter(evidence.keys(), dtype=np.int64, count=len(evidence))
        name = np.fromiter((e.name for e in evidence.values()), dtype=np.float64, count=len(rows))
        text = np.fromiter((e.text for e in evidence.values()), dtype=np.float64, count=len(rows))
        vector = np.fromiter(
            (e.vector for e in evidence.values()), dtype=np.float64, count=len(rows)
        )
        scores = (
            fuse(name, text, vector, TEXT_ONLY_WEIGHT if text_only else self.text_weights[rows])
            + PROGRAM_BONUS * self.has_program[rows]
            + POPULARITY_WEIGHT * self.popularity[rows]
            - PART_PENALTY * self.is_part[rows]
        )
        for ecosystem in ecosystems:
            scores = scores + ECOSYSTEM_BONUS * self.ecosystem_members[ecosystem][rows]
        scores = np.round(scores, 6)
        order = np.lexsort((rows, self.attr_path_lengths[rows], self.flagged[rows], -scores))
        return [(int(rows[i]), float(scores[i])) for i in order]

    def _materialize(
        self, page: list[tuple[int, float]], evidence: dict[int, _Evidence]
    ) -> list[SearchResult]:
        results = []
        for row, score in page:
            record = {name: column[row].as_py() for name, column in self.columns.items()}
            record["licenses"] = record["licenses"] or []
            record["maintainers"] = record["maintainers"] or []
            results.append(
                SearchResult(**record, score=round(score, 4), matched=sorted(evidence[row].matched))
            )
        return results


def _fetch(builder: Any, where: str | None, limit: int, columns: list[str]) -> pa.Table:
    """Runs a LanceDB query: the filter applied before the limit, row ids with ``columns``."""
    if where:
        builder = builder.where(where, prefilter=True)
    return builder.limit(limit).select(columns).with_row_id(True).to_arrow()


def fuse(
    name: np.ndarray,
    text: np.ndarray,
    vector: np.ndarray,
    text_weight: float | np.ndarray = TEXT_WEIGHT,
) -> np.ndarray:
    """One relevance score from the name, BM25 and vector evidence (each 0..1).

    Names dominate (an exact name is what a person typing it means); BM25 and the vector
    add up, so a package both described by the query's words and close in meaning beats one
    that is only either.
    """
    semantic = np.clip((vector - VECTOR_FLOOR) / (VECTOR_CEILING - VECTOR_FLOOR), 0.0, 1.0)
    return NAME_WEIGHT * name + text_weight * text + VECTOR_WEIGHT * semantic


def without_words(text: str, words: frozenset[str]) -> str:
    """``text`` without the space-separated words made only of ``words`` ("node.js")."""
    kept = [
        token
        for token in text.split()
        if not (parts := [p for p in _WORD_SPLIT.split(token.lower()) if p])
        or not set(parts) <= words
    ]
    return " ".join(kept)


def _typo_score(key: str, distance: int, kind: int) -> float:
    """A typo's name evidence: fewer edits and longer names (less likely a different word)
    score higher; ``kind`` 0 is the attribute path's own name, 1 the package name, 2 the
    program ("postgersql" means postgresql more than postgresql_15 named "postgresql")."""
    return TYPO_BASE - TYPO_PER_EDIT * (distance - 1) - 0.1 / max(len(key) - 2, 1) - 0.02 * kind


def popularity_prior(mentions: np.ndarray) -> np.ndarray:
    """0..1 from how many other packages mention a package, saturating (see POPULARITY_*)."""
    return np.minimum(np.log1p(mentions.astype(np.float64)), POPULARITY_SATURATION) / (
        POPULARITY_SATURATION
    )


def _fuzzy_eligible(text: str) -> bool:
    """Typos are looked for in one-word queries: a name, not a sentence."""
    return " " not in text and 4 <= len(name_key(text)) <= 40


def _timed(function: Any, *args: Any) -> tuple[Any, float]:
    mark = time.perf_counter()
    return function(*args), _ms(mark)


def _ms(mark: float) -> float:
    return round((time.perf_counter() - mark) * 1000, 2)


_OPEN: dict[tuple[str, tuple[tuple[str, str], ...]], PackageSearch] = {}
_OPEN_LOCK = threading.Lock()


def open_search(uri: str, storage_options: Mapping[str, str] | None = None) -> PackageSearch:
    """The process's open :class:`PackageSearch` for ``uri``, opened on first use."""
    key = (uri, tuple(sorted((storage_options or {}).items())))
    with _OPEN_LOCK:
        search = _OPEN.get(key)
        if search is None:
            search = PackageSearch.open(uri, storage_options)
            _OPEN[key] = search
    return search


def search(
    uri: str,
    query: str,
    limit: int = 10,
    offset: int = 0,
    filters: SearchFilters | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> SearchResponse:
    """Searches the minified dataset at ``uri`` (opened once per process)."""
    return open_search(uri, storage_options).search(
        query, limit=limit, offset=offset, filters=filters
    )


def parse_flag_filter(name: str, value: str) -> bool | None:
    """``include`` / ``exclude`` / ``only`` (or true/false) for one flag filter."""
    lowered = value.strip().lower()
    if lowered in TRI_STATE:
        return TRI_STATE[lowered]
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidQuery(f"{name}={value[:40]!r} must be include, exclude or only")


__all__ = [
    "InvalidQuery",
    "ModelMismatchError",
    "PackageSearch",
    "SearchError",
    "SearchFilters",
    "SearchResponse",
    "SearchResult",
    "open_search",
    "search",
]
