"""The minified dataset: what a search needs from the main dataset, indexed for search.

From the main dataset's ``packages`` table this keeps the columns a result shows and the
ones ranking and filters read, in compact forms:

- licenses as SPDX ids (or nixpkgs short names when a license has none), maintainers as
  GitHub handles (or names), the homepage as one URL;
- platforms as a small integer naming one of the few distinct platform lists (the fixture's
  120k packages use 20 lists of ~35 platforms each; as strings they would be 58 MB), with
  the lists themselves in the table's schema metadata;
- the long description cut to :data:`LONG_DESCRIPTION_CHARS`, enough for the words an
  intent query uses;
- ``names``: the words of the attribute path, name and main program, split on ``.``, ``-``,
  ``_`` and camel case, so ``python313Packages.requests`` is found by ``requests`` and
  ``python``;
- ``mentions``: how many other packages' descriptions name the package, search's
  popularity prior; the schema metadata also lists the package sets big enough to be a
  language ecosystem a query can name (``python313Packages``: python);
- the vector as float16 (half the bytes, no measurable loss in ranking; see
  benchmarks/search_bench.py), optionally projected to fewer dimensions by PCA whose matrix
  travels in the schema metadata so queries are projected the same way.

It then builds the full-text indexes (names, description, long description) and the vector
index, and records the embedding provenance so search can refuse a query model that differs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fdnix_assets import search as fmt
from fdnix_assets.search_vectors import vector_rows

if TYPE_CHECKING:
    from lancedb.index import FTS

LONG_DESCRIPTION_CHARS = 600
DESCRIPTION_CHARS = 1_000
HOMEPAGE_CHARS = 500
# LanceDB's FTS languages that have both a stemmer and a stop-word list.
FTS_LANGUAGES = (
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "russian",
    "spanish",
    "swedish",
)
MAIN_COLUMNS = [
    "attr_path",
    "pname",
    "version",
    "description",
    "long_description",
    "homepages",
    "main_program",
    "licenses",
    "maintainers",
    "platforms",
    "bad_platforms",
    "position",
    "broken",
    "insecure",
    "unfree",
    "unsupported",
]
PCA_SAMPLE_ROWS = 50_000
# Below this many vectors an exact scan takes a few milliseconds; no index is built.
MIN_ROWS_FOR_INDEX = 5_000
MIN_ROWS_PER_PARTITION = 256
REFINE_FACTOR = 4
# A package set (``python313Packages``) is an ecosystem search can name when it is this big.
MIN_PACKAGE_SET_SIZE = 200
# Words that are also package names but in a description are just English ("is", "the"):
# mentions of them say nothing about the package.
MENTION_STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have if in into is it its no not of on or "  # noqa: SIM905
    "so such than that the their then there these they this to was were will with".split()
)
_MENTION_SEPARATORS = r"[^a-z0-9+._-]+"


class MinifyError(ValueError):
    """The main dataset or the options cannot make a minified dataset; says which and why."""


@dataclass(frozen=True)
class MinifyOptions:
    """How the minified dataset is built. Defaults are what the benchmark measured best."""

    fts_stopwords: str | None = "english"
    fts_stemmer: str | None = "english"
    vector_dimensions: int | None = None
    vector_index_partitions: int | None = None
    long_description_chars: int = LONG_DESCRIPTION_CHARS


@dataclass
class MinifyReport:
    """What was built, for materialization metadata and the benchmark."""

    rows: int
    vectors: int
    vector_dimensions: int
    source_dimensions: int
    total_bytes: int
    column_bytes: dict[str, int]
    index_bytes: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    vector_index: str = ""

    @property
    def fts_index_seconds(self) -> float:
        return self.seconds.get("fts_indexes", 0.0)


def fts_language(stopwords: str | None, stemmer: str | None) -> str | None:
    """The one LanceDB FTS language both settings name (they share it), or None if neither."""
    chosen = {name.strip().lower() for name in (stopwords, stemmer) if name and name.strip()}
    if not chosen:
        return None
    if len(chosen) > 1:
        raise MinifyError(
            f"FTS_STOPWORDS={stopwords!r} and FTS_STEMMER={stemmer!r} name different languages; "
            "LanceDB's full-text index uses one language for both (or leave one empty)"
        )
    language = chosen.pop()
    if language not in FTS_LANGUAGES:
        variable = (
            "FTS_STEMMER" if stemmer and stemmer.strip().lower() == language else "FTS_STOPWORDS"
        )
        raise MinifyError(
            f"{variable}={language!r} is not a language LanceDB's full-text index supports: "
            + ", ".join(FTS_LANGUAGES)
        )
    return language


def fts_configs(options: MinifyOptions) -> dict[str, FTS]:
    """One native FTS index per searched column, with the stemmer and stop words configured.

    Names are never stemmed (``rust`` is not ``rusty``) but lose stop words, so the ``a`` of
    "take a screenshot" does not find ``hex-a-hop``.
    """
    from lancedb.index import FTS

    language = fts_language(options.fts_stopwords, options.fts_stemmer) or "english"
    stop = options.fts_stopwords is not None and options.fts_stopwords.strip() != ""
    stem = options.fts_stemmer is not None and options.fts_stemmer.strip() != ""
    text = FTS(
        language=language.capitalize(),
        stem=stem,
        remove_stop_words=stop,
        ascii_folding=True,
        with_position=False,
    )
    names = FTS(
        language=language.capitalize(), stem=False, remove_stop_words=stop, ascii_folding=True
    )
    return {
        fmt.NAMES_COLUMN: names,
        "description": text,
        "long_description": text,
    }


def _clip(values: pa.ChunkedArray, chars: int) -> pa.Array:
    """Cuts each string to ``chars`` characters at a word boundary; nulls stay null."""
    texts = values.to_pylist()
    clipped = []
    for text in texts:
        if text is None or len(text) <= chars:
            clipped.append(text)
            continue
        cut = text[:chars]
        space = cut.rfind(" ")
        clipped.append(cut[: space if space > chars // 2 else chars].rstrip())
    return pa.array(clipped, pa.string())


def _simple_licenses(licenses: list[dict[str, Any]] | None) -> list[str]:
    out = []
    for license_ in licenses or []:
        label = license_.get("spdx_id") or license_.get("short_name") or license_.get("full_name")
        if label and label not in out:
            out.append(label)
    return out


def _simple_maintainers(people: list[dict[str, Any]] | None) -> list[str]:
    out = []
    for person in people or []:
        label = person.get("github") or person.get("name")
        if label and label not in out:
            out.append(label)
    return out


def license_aliases(licenses: Iterable[list[dict[str, Any]] | None]) -> dict[str, str]:
    """Lower-cased SPDX id, short name and full name -> the label the dataset stores."""
    aliases: dict[str, str] = {}
    for row in licenses:
        for license_ in row or []:
            label = (
                license_.get("spdx_id") or license_.get("short_name") or license_.get("full_name")
            )
            if not label:
                continue
            for alias in (
                license_.get("spdx_id"),
                license_.get("short_name"),
                license_.get("full_name"),
            ):
                if alias:
                    aliases.setdefault(alias.lower(), label)
    return dict(sorted(aliases.items()))


def platform_sets(
    platforms: pa.Array | pa.ChunkedArray | Sequence[list[str] | None],
    bad_platforms: pa.Array | pa.ChunkedArray | Sequence[list[str] | None],
) -> tuple[np.ndarray, list[dict[str, list[str]]]]:
    """Each row's platform-set number, and the sets (platforms and bad platforms) by number.

    Numbered in Arrow (each row's lists joined into one key, then dictionary-encoded): the
    fixture's 4 million platform strings never become Python objects.
    """
    good = pa.chunked_array([platforms]) if isinstance(platforms, pa.Array) else platforms
    bad = (
        pa.chunked_array([bad_platforms]) if isinstance(bad_platforms, pa.Array) else bad_platforms
    )
    if not isinstance(good, pa.ChunkedArray):
        good = pa.chunked_array([pa.array(list(good), fmt.STRING_LIST)])
    if not isinstance(bad, pa.ChunkedArray):
        bad = pa.chunked_array([pa.array(list(bad), fmt.STRING_LIST)])
    # \x1f and \x1e cannot occur in a Nix system name: they separate items and the two lists.
    keys = pc.binary_join_element_wise(
        pc.fill_null(pc.binary_join(good, "\x1f"), ""),
        pc.fill_null(pc.binary_join(bad, "\x1f"), ""),
        "\x1e",
    )
    encoded = pc.dictionary_encode(keys).combine_chunks()
    values = encoded.dictionary.to_pylist()
    if len(values) > np.iinfo(np.int16).max:
        raise MinifyError(f"{len(values):,} distinct platform lists; at most 32,767 fit")
    sets = []
    for value in values:
        good_part, bad_part = value.split("\x1e")
        sets.append(
            {
                "platforms": good_part.split("\x1f") if good_part else [],
                "bad_platforms": bad_part.split("\x1f") if bad_part else [],
            }
        )
    return encoded.indices.to_numpy().astype(np.int16), sets


def mention_counts(
    attr_paths: pa.Array | pa.ChunkedArray,
    descriptions: pa.Array | pa.ChunkedArray,
    long_descriptions: pa.Array | pa.ChunkedArray,
) -> np.ndarray:
    """For each package, how many other packages' descriptions name it (its popularity).

    A package's name is the last part of its attribute path; a description names it when
    one of its words, lower case, equals that name. Each package counts once per name.
    """
    names = pc.utf8_lower(pc.replace_substring_regex(attr_paths, r"^.*\.", ""))
    text = pc.utf8_lower(
        pc.binary_join_element_wise(
            pc.fill_null(descriptions, ""), pc.fill_null(long_descriptions, ""), " "
        )
    )
    words = pc.split_pattern_regex(text, _MENTION_SEPARATORS)
    parents = pc.list_parent_indices(words)
    pairs = pa.table({"row": parents, "word": pc.utf8_trim(pc.list_flatten(words), ".-_")})
    pairs = pairs.filter(pc.is_in(pairs["word"], value_set=pc.unique(names)))
    # A package's own description naming it is no mention.
    pairs = pairs.filter(pc.not_equal(pairs["word"], pc.take(names, pairs["row"])))
    distinct = pairs.group_by(["word", "row"]).aggregate([])
    counts = distinct.group_by("word").aggregate([("row", "count")])
    index = pc.fill_null(pc.index_in(names, value_set=counts["word"]), -1).to_numpy()
    result = np.zeros(len(names), dtype=np.int64)
    hit = index >= 0
    result[hit] = counts["row_count"].to_numpy()[index[hit]]
    stop = pc.is_in(names, value_set=pa.array(sorted(MENTION_STOP_WORDS))).to_numpy(
        zero_copy_only=False
    )
    result[stop] = 0
    return np.minimum(result, np.iinfo(np.uint16).max).astype(np.uint16)


def package_sets(attr_paths: Sequence[str]) -> dict[str, str]:
    """Attribute sets big enough to be an ecosystem (``python313Packages``: python).

    A set's ecosystem is the first word of its name that search knows as one
    (:data:`fdnix_assets.search.ECOSYSTEM_WORDS`); sets of other names are left out.
    """
    sizes: dict[str, int] = {}
    for attr_path in attr_paths:
        prefix, dot, _ = attr_path.partition(".")
        if dot:
            sizes[prefix] = sizes.get(prefix, 0) + 1
    found = {}
    for prefix, size in sizes.items():
        if size < MIN_PACKAGE_SET_SIZE:
            continue
        ecosystem = next((w for w in fmt.name_words(prefix) if w in fmt.ECOSYSTEM_WORDS), None)
        if ecosystem is not None:
            found[prefix] = ecosystem
    return found


def name_words_column(
    attr_paths: Sequence[str], pnames: Sequence[str | None], programs: Sequence[str | None]
) -> pa.Array:
    return pa.array(
        [
            " ".join(fmt.name_words(a, p, m))
            for a, p, m in zip(attr_paths, pnames, programs, strict=True)
        ],
        pa.string(),
    )


def fit_projection(vectors: np.ndarray, dimensions: int, seed: int = 0) -> fmt.VectorProjection:
    """PCA of (a sample of) the vectors, keeping ``dimensions`` components."""
    if dimensions >= vectors.shape[1]:
        raise MinifyError(
            f"vector_dimensions={dimensions} must be below the source's {vectors.shape[1]}"
        )
    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > PCA_SAMPLE_ROWS:
        sample = vectors[rng.choice(len(vectors), PCA_SAMPLE_ROWS, replace=False)]
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    return fmt.VectorProjection(
        mean=mean.astype(np.float32), components=vt[:dimensions].T.astype(np.float32)
    )


def minified_vectors(
    vector_column: pa.ChunkedArray, dimensions: int | None
) -> tuple[pa.Array, fmt.VectorProjection | None, int]:
    """float16 vectors (projected when ``dimensions`` is set) and how many are present.

    Works on the column's value buffer in place (a fixed-size list stores every row, null
    or not), so the 184 MB of float32 vectors are not copied before being halved.
    """
    vectors = vector_column.combine_chunks()
    valid = np.asarray(vectors.is_valid())
    source_dimensions = vectors.type.list_size
    count = int(valid.sum())
    if count == 0:
        empty = pa.nulls(len(vectors), fmt.vector_type(dimensions or source_dimensions))
        return empty, None, 0
    dense = vector_rows(vectors)
    projection = None
    if dimensions is not None and dimensions != source_dimensions:
        projection = fit_projection(dense[valid].astype(np.float32), dimensions)
        half = np.zeros((len(vectors), dimensions), dtype=np.float16)
        half[valid] = projection.apply(dense[valid].astype(np.float32)).astype(np.float16)
    else:
        half = dense.astype(np.float16)
        half[~valid] = 0
    out_dimensions = half.shape[1]
    values = pa.array(half.reshape(-1), pa.float16())
    mask = None if count == len(vectors) else pa.array(~valid)
    array = pa.FixedSizeListArray.from_arrays(values, out_dimensions, mask=mask)
    return array, projection, count


def minify_table(
    main: pa.Table, options: MinifyOptions, provenance: dict[bytes, bytes]
) -> tuple[pa.Table, fmt.VectorProjection | None, int]:
    """The minified ``packages`` table (schema metadata included) built from main columns."""
    missing = [name for name in [*MAIN_COLUMNS, "vector"] if name not in main.column_names]
    if missing:
        raise MinifyError(f"the main dataset lacks the columns {', '.join(missing)}")
    licenses = main["licenses"].to_pylist()
    platform_column, sets = platform_sets(main["platforms"], main["bad_platforms"])
    homepages = main["homepages"].to_pylist()
    attr_paths = main["attr_path"].to_pylist()
    vectors, projection, vector_count = minified_vectors(main["vector"], options.vector_dimensions)
    long_descriptions = _clip(main["long_description"], options.long_description_chars)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "attr_path": main["attr_path"],
        "pname": main["pname"],
        "version": main["version"],
        "description": _clip(main["description"], DESCRIPTION_CHARS),
        "long_description": long_descriptions,
        "homepage": pa.array(
            [(h[0][:HOMEPAGE_CHARS] if h else None) for h in homepages], pa.string()
        ),
        "main_program": main["main_program"],
        "licenses": pa.array([_simple_licenses(x) for x in licenses], fmt.STRING_LIST),
        "maintainers": pa.array(
            [_simple_maintainers(x) for x in main["maintainers"].to_pylist()], fmt.STRING_LIST
        ),
        "platform_set": pa.array(platform_column, pa.int16()),
        "position": main["position"],
        "broken": main["broken"],
        "insecure": main["insecure"],
        "unfree": main["unfree"],
        "unsupported": main["unsupported"],
        fmt.MENTIONS_COLUMN: pa.array(
            mention_counts(main["attr_path"], main["description"], long_descriptions),
            pa.uint16(),
        ),
        fmt.NAMES_COLUMN: name_words_column(
            attr_paths, main["pname"].to_pylist(), main["main_program"].to_pylist()
        ),
        "vector": vectors,
    }
    table = pa.table(columns, schema=fmt.minified_schema(vectors.type.list_size))
    metadata = dict(provenance)
    metadata[fmt.META_FORMAT] = fmt.FORMAT_VERSION.encode()
    metadata[fmt.META_PLATFORM_SETS] = json.dumps(sets).encode()
    metadata[fmt.META_LICENSE_ALIASES] = json.dumps(license_aliases(licenses)).encode()
    metadata[fmt.META_VECTOR_DIMENSIONS] = str(vectors.type.list_size).encode()
    metadata[fmt.META_VECTOR_COUNT] = str(vector_count).encode()
    metadata[fmt.META_PACKAGE_SETS] = json.dumps(package_sets(attr_paths)).encode()
    if projection is not None:
        metadata[fmt.META_VECTOR_PROJECTION] = projection.to_metadata()
    return table.replace_schema_metadata(metadata), projection, vector_count


@dataclass(frozen=True)
class MinifiedIndexPlan:
    """IVF with RaBitQ codes over the float16 vectors, searched exhaustively, then refined.

    Measured on the full fixture (119,845 MiniLM vectors, 270 real query texts, recall@10
    against exact float32 search): IVF_PQ with 346 partitions and 48 sub-vectors took
    336 s to build and reached 0.75 recall at nprobes 20 (6 ms), 0.90 only at nprobes 80
    (14 ms). IVF_RQ with 32 partitions built in 4 s and, probing every partition with a
    refine factor of 10, reached 0.995 in 5 ms: one bit per dimension is cheap enough to
    scan in full, and the refine step re-ranks with the stored vectors. Search asks for 50
    candidates; refining 4x as many (0.97 recall@50, 6 ms) costs little more than the
    query itself, 10x (0.99) takes 10 ms. Refining 2x (0.91 recall@50) saves under 1 ms
    and, the index being built from a random start, made the dev ranking differ between
    two builds; 3x and 4x ranked identically on both.
    """

    partitions: int
    nprobes: int
    refine_factor: int = REFINE_FACTOR

    def describe(self) -> str:
        return (
            f"IVF_RQ ({self.partitions} partitions; queried with nprobes {self.nprobes}, "
            f"refine factor {self.refine_factor})"
        )


def plan_minified_index(vectors: int, partitions: int | None = None) -> MinifiedIndexPlan | None:
    """The vector index for ``vectors`` rows, or None when an exact scan is as good.

    ``partitions`` is VECTOR_INDEX_PARTITIONS (0: no index; None: about sqrt(rows) / 10).
    VECTOR_INDEX_SUB_VECTORS shapes the main dataset's IVF-PQ index only: RaBitQ codes
    have no sub-vectors.
    """
    if partitions == 0 or vectors < MIN_ROWS_FOR_INDEX:
        return None
    chosen = partitions or max(1, round(vectors**0.5 / 10))
    chosen = max(1, min(chosen, vectors // MIN_ROWS_PER_PARTITION))
    return MinifiedIndexPlan(partitions=chosen, nprobes=chosen)


def build_minified_index(table: Any, plan: MinifiedIndexPlan) -> None:
    from lancedb.index import IvfRq

    table.create_index(
        "vector",
        config=IvfRq(distance_type="cosine", num_partitions=plan.partitions),
        replace=True,
    )
    table.update_field_metadata(
        {
            "path": "vector",
            "metadata": {
                "fdnix.ann.index": "IVF_RQ",
                "fdnix.ann.partitions": str(plan.partitions),
                fmt.ANN_NPROBES.decode(): str(plan.nprobes),
                fmt.ANN_REFINE_FACTOR.decode(): str(plan.refine_factor),
            },
        }
    )


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def column_bytes(table: pa.Table, scratch: Path) -> dict[str, int]:
    """Bytes each column takes on disk, in LanceDB's encoding.

    A Lance data file holds all columns together and LanceDB does not report them apart,
    so each column is written alone to scratch space and measured (vectors excepted: their
    size is rows x dimensions x bytes per value).
    """
    import lancedb

    sizes = {}
    for name in table.column_names:
        field = table.schema.field(name)
        if pa.types.is_fixed_size_list(field.type):
            # Lance stores float vectors uncompressed: the size is arithmetic (writing the
            # column again would cost hundreds of MB of memory for nothing).
            sizes[name] = table.num_rows * field.type.list_size * field.type.value_type.byte_width
            continue
        target = scratch / name
        db = lancedb.connect(str(target))
        db.create_table("c", data=table.select([name]), mode="create", on_bad_vectors="null")
        sizes[name] = sum(p.stat().st_size for p in (target / "c.lance" / "data").rglob("*"))
        shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return sizes


def index_bytes(table: Any) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for index in table.list_indices():
        size = getattr(index, "size_bytes", None)
        sizes[index.name] = int(size or 0)
    return sizes


def build_minified(
    main_uri: str,
    target: Path,
    options: MinifyOptions,
    storage_options: dict[str, str] | None = None,
) -> MinifyReport:
    """Reads the main dataset at ``main_uri`` and writes the minified dataset to ``target``."""
    import lancedb

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    fts_language(options.fts_stopwords, options.fts_stemmer)
    main_table = lancedb.connect(main_uri, storage_options=storage_options or None).open_table(
        fmt.TABLE_NAME
    )
    provenance = {
        key: value
        for key, value in (main_table.schema.metadata or {}).items()
        if key.startswith(b"fdnix.") and key in fmt.PROVENANCE_KEYS
    }
    if fmt.META_EMBEDDING_MODEL not in provenance:
        raise MinifyError(
            f"the main dataset at {main_uri} records no embedding model in its schema metadata"
        )
    main = main_table.search().select([*MAIN_COLUMNS, "vector"]).limit(None).to_arrow()
    seconds["read"] = time.perf_counter() - started

    mark = time.perf_counter()
    table, _, vector_count = minify_table(main, options, provenance)
    del main
    seconds["minify"] = time.perf_counter() - mark

    mark = time.perf_counter()
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    db = lancedb.connect(str(target))
    packages = db.create_table(fmt.TABLE_NAME, data=table, mode="create", on_bad_vectors="null")
    db.create_table(
        fmt.NAME_KEYS_TABLE,
        data=fmt.name_keys_table(
            table["attr_path"].to_pylist(),
            table["pname"].to_pylist(),
            table["main_program"].to_pylist(),
        ),
        mode="create",
    )
    seconds["write"] = time.perf_counter() - mark

    mark = time.perf_counter()
    for column, config in fts_configs(options).items():
        packages.create_index(column, config=config)
    seconds["fts_indexes"] = time.perf_counter() - mark

    mark = time.perf_counter()
    plan = plan_minified_index(vector_count, options.vector_index_partitions)
    index_name = ""
    if plan is not None:
        build_minified_index(packages, plan)
        index_name = plan.describe()
    seconds["vector_index"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started

    source_dimensions = int(provenance.get(fmt.META_EMBEDDING_DIMENSIONS, b"0") or 0)
    return MinifyReport(
        rows=table.num_rows,
        vectors=vector_count,
        vector_dimensions=table.schema.field("vector").type.list_size,
        source_dimensions=source_dimensions,
        total_bytes=_dir_bytes(target),
        column_bytes=column_bytes(table, target.parent / f".{target.name}.columns"),
        index_bytes=index_bytes(packages)
        | {fmt.NAME_KEYS_TABLE: _dir_bytes(target / f"{fmt.NAME_KEYS_TABLE}.lance")},
        seconds={key: round(value, 3) for key, value in seconds.items()},
        vector_index=index_name,
    )
