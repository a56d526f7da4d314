"""Search over the 2k-package sample embedded with the local model, and hand-made datasets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pytest

from fdnix_assets.search import (
    InvalidQuery,
    ModelMismatchError,
    PackageSearch,
    SearchFilters,
    _NameIndex,
    name_key,
    name_keys_table,
    name_words,
    osa_distance,
    without_words,
)
from fdnix_assets.search_embedding import BedrockQueryEmbedder

from . import search_support


@pytest.fixture(scope="session")
def minified_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return search_support.sample_minified(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def engine(minified_sample: Path) -> PackageSearch:
    return PackageSearch.open(str(minified_sample))


def top(engine: PackageSearch, query: str, limit: int = 10, **kwargs: object) -> list[str]:
    return [r.attr_path for r in engine.search(query, limit=limit, **kwargs).results]


def test_name_words_split_paths_names_and_camel_case() -> None:
    words = name_words("python313Packages.requests", "python3.13-requests", None)
    assert {"python313packages", "python", "packages", "requests"} <= set(words)
    assert "sqlite" in name_words("sqlite3") and "sqlite3" in name_words("sqlite3")
    assert name_words("gitFull") == ["gitfull", "git", "full"]
    assert name_key("Home-Assistant") == name_key("home assistant") == "homeassistant"


def test_osa_distance_counts_a_swap_as_one_edit() -> None:
    assert osa_distance("memcahced", "memcached", 2) == 1
    assert osa_distance("gnumerc", "gnumeric", 2) == 1
    assert osa_distance("tmux", "tmux", 1) == 0
    assert osa_distance("abcdef", "uvwxyz", 2) == 3


def test_numpy_minilm_matches_sentence_transformers() -> None:
    from fdnix_assets.embedding.local import load_minilm

    queries = ["git", "take a screenshot", "Café Ünïcode 日本語", "x " * 300]
    reference = load_minilm().encode(queries, normalize_embeddings=True, convert_to_numpy=True)
    embedder = search_support.fresh_query_embedder()
    assert embedder.runtime == "numpy"
    for query, expected in zip(queries, reference, strict=True):
        embedder.clear_cache()
        vector = embedder.embed(query)
        assert vector.shape == (384,) and vector.dtype == np.float32
        assert float(vector @ expected) > 0.9999, query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("git", "git"),
        ("pytest", "python313Packages.pytest"),
        ("sqlite3", "sqlite3"),
        ("python313Packages.pytest", "python313Packages.pytest"),
        ("memcahced", "memcached"),
        ("gnumerc", "gnumeric"),
        ("gnumeri", "gnumeric"),
        ("GIT", "git"),
    ],
)
def test_names_prefixes_and_typos_come_first(
    engine: PackageSearch, query: str, expected: str
) -> None:
    assert top(engine, query)[0] == expected


@pytest.mark.parametrize(
    ("query", "relevant"),
    [
        ("take a screenshot", {"flameshot", "scrot", "maim"}),
        ("text based web browser", {"lynx", "w3m", "elinks"}),
        ("ban ip addresses after failed logins", {"fail2ban"}),
        ("javascript test framework", {"nodePackages.jest", "nodePackages.mocha"}),
    ],
)
def test_multi_word_and_intent_queries(engine: PackageSearch, query: str, relevant: set) -> None:
    assert relevant & set(top(engine, query, limit=5))


def test_dev_queries_on_the_sample_are_found(engine: PackageSearch) -> None:
    queries = search_support.dev_queries()
    found = sum(bool(set(q["relevant"]) & set(top(engine, q["query"]))) for q in queries)
    assert found == len(queries)


def test_results_carry_what_a_person_needs(engine: PackageSearch) -> None:
    response = engine.search("memcached", limit=3)
    assert response.mode == "hybrid" and response.note is None
    first = response.results[0].as_dict()
    assert first["attr_path"] == "memcached"
    assert first["version"] and first["description"] and first["licenses"]
    assert first["score"] >= response.results[1].score
    assert "exact" in first["matched"]


def test_offset_pages_through_the_same_ranking(engine: PackageSearch) -> None:
    everything = top(engine, "python http client", limit=10)
    assert top(engine, "python http client", limit=5, offset=5) == everything[5:]


@pytest.mark.parametrize("query", ["take a screenshot", "python http client", "library"])
def test_a_bigger_page_or_a_later_one_never_reorders_the_first(
    engine: PackageSearch, query: str
) -> None:
    # Up to 100 results come from the usual retrieval depths; beyond them (these queries
    # match hundreds of the sample's packages), deeper retrievals add packages after those.
    first_ten = top(engine, query, limit=10)
    first_hundred = top(engine, query, limit=100)
    assert first_hundred[:10] == first_ten
    pages = [path for offset in (0, 100, 200) for path in top(engine, query, 100, offset=offset)]
    assert pages[:100] == first_hundred
    assert len(pages) > 150, "the deeper retrieval found nothing more"
    assert len(pages) == len(set(pages)), "a package came back on two pages"


def test_license_filter_applies_before_the_limit(engine: PackageSearch) -> None:
    response = engine.search("python", limit=10, filters=SearchFilters(licenses=("asl20",)))
    assert len(response.results) == 10
    assert all("Apache-2.0" in r.licenses for r in response.results)
    unfiltered = engine.search("python", limit=10)
    assert any("Apache-2.0" not in r.licenses for r in unfiltered.results)


def test_flag_filters_include_exclude_and_only(engine: PackageSearch) -> None:
    only = engine.search("library", limit=10, filters=SearchFilters(broken=True)).results
    assert only and all(r.broken for r in only)
    excluded = engine.search("library", limit=20, filters=SearchFilters(broken=False)).results
    assert excluded and not any(r.broken for r in excluded)


def test_platform_filter_keeps_packages_available_there(engine: PackageSearch) -> None:
    darwin = engine.search("git", limit=10, filters=SearchFilters(platform="aarch64-darwin"))
    assert darwin.results
    for result in darwin.results:
        row = engine.columns["attr_path"].to_pylist().index(result.attr_path)
        entry = engine.platform_sets[int(engine.platform_column[row])]
        assert not entry["platforms"] or "aarch64-darwin" in entry["platforms"]
        assert "aarch64-darwin" not in entry["bad_platforms"]


@pytest.mark.parametrize(
    "filters",
    [
        SearchFilters(licenses=("MIT') OR true --",)),
        SearchFilters(licenses=("nonsense-license",)),
        SearchFilters(platform="x86_64-linux' OR 1=1"),
    ],
)
def test_unknown_filter_values_are_refused_not_interpolated(
    engine: PackageSearch, filters: SearchFilters
) -> None:
    with pytest.raises(InvalidQuery, match="unknown"):
        engine.search("git", filters=filters)


def test_hostile_query_text_is_only_text(engine: PackageSearch) -> None:
    rows = engine.table.count_rows()
    for query in ["'; DROP TABLE packages; --", 'git" OR 1=1', "%00\\x00 ) OR (", "*" * 200]:
        engine.search(query, limit=5)
    assert engine.table.count_rows() == rows


@pytest.mark.parametrize(
    ("query", "limit", "offset", "message"),
    [
        ("", 10, 0, "empty"),
        ("   \n\t", 10, 0, "empty"),
        ("x" * 201, 10, 0, "limit is 200"),
        ("git", 0, 0, "limit"),
        ("git", 101, 0, "limit"),
        ("git", 10, -1, "offset"),
    ],
)
def test_invalid_queries_say_what_is_wrong(
    engine: PackageSearch, query: str, limit: int, offset: int, message: str
) -> None:
    with pytest.raises(InvalidQuery, match=message):
        engine.search(query, limit=limit, offset=offset)


def test_a_different_query_model_is_refused(minified_sample: Path) -> None:
    titan = BedrockQueryEmbedder("amazon.titan-embed-text-v2:0", 256, region="us-east-1")
    with pytest.raises(ModelMismatchError, match="all-MiniLM-L6-v2"):
        PackageSearch.open(str(minified_sample), embedder=titan)


def test_without_the_model_files_search_is_text_only_and_says_so(
    minified_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FDNIX_MINILM_DIR", str(tmp_path / "no-model-here"))
    search = PackageSearch.open(str(minified_sample))
    response = search.search("memcahced", limit=5)
    assert response.mode == "text"
    assert "text indexes only" in (response.note or "")
    assert response.results[0].attr_path == "memcached"


def _tie_entries() -> tuple[list, dict]:
    """Groups of packages equally good for a query: same description, same vector."""
    entries, vectors = [], {}
    groups = {
        "frobnicates widgets quickly": [("zz", {}), ("aaa", {})],
        "polishes gadgets brightly": [("bbb1", {"broken": True}), ("bbb2", {})],
        "untangles cables patiently": [("ccc1", {"insecure": True}), ("ccc2", {})],
        "waters plants reliably": [("ddd1", {"unfree": True}), ("ddd2", {})],
    }
    for seed, (description, members) in enumerate(groups.items()):
        for attr_path, flags in members:
            entries.append(search_support.package(attr_path, description.capitalize(), **flags))
            vectors[attr_path] = search_support.unit(seed)
    return entries, vectors


def test_ties_go_to_shorter_paths_and_healthy_packages(tmp_path: Path) -> None:
    entries, vectors = _tie_entries()
    path = search_support.listing_dataset(tmp_path, "ties", entries, vectors)
    search = PackageSearch.open(str(path))
    assert top(search, "frobnicates widgets")[:2] == ["zz", "aaa"]
    assert top(search, "polishes gadgets")[:2] == ["bbb2", "bbb1"]
    assert top(search, "untangles cables")[:2] == ["ccc2", "ccc1"]
    assert top(search, "waters plants")[:2] == ["ddd2", "ddd1"]
    # The flagged package is still found, just not ahead of its healthy twin.
    assert "bbb1" in top(search, "polishes gadgets", filters=SearchFilters(broken=True))


def test_name_typos_are_found_in_memory_by_pair_signatures() -> None:
    index = _NameIndex(
        name_keys_table(
            ["ripgrep", "kubectl", "python313Packages.requests", "grep"],
            ["ripgrep", "kubectl", "python3.13-requests", "gnugrep"],
            ["rg", None, None, "grep"],
        )
    )
    # A swap of neighbours is one edit; a dropped letter is one; "grpe" is one from grep.
    assert {(r, d) for r, _, d in index.typos("ripgrpe", 2, 200)} == {(0, 1)}
    assert {(r, d) for r, _, d in index.typos("kubctl", 2, 200)} == {(1, 1)}
    assert {(r, d) for r, _, d in index.typos("reqeusts", 2, 200)} == {(2, 1)}
    assert {(r, d) for r, _, d in index.typos("grpe", 1, 200)} == {(3, 1)}
    # Too many edits, or the name itself (that is an exact match, not a typo): nothing.
    assert index.typos("rpgirep", 1, 200) == []
    assert index.typos("kubectl", 2, 200) == []


def test_name_typos_are_found_among_many_look_alike_names() -> None:
    # 20k names of the same letters and lengths share most signature bits with the query;
    # the lookup must still check the real match among the few it verifies.
    rng = np.random.default_rng(3)
    letters = np.array(list("ripgeacd"))
    decoys = sorted({"".join(rng.choice(letters, rng.integers(6, 9))) for _ in range(20_000)})
    decoys = [d for d in decoys if osa_distance("ripgrpe", d, 2) > 2]
    names = [*decoys, "ripgrep"]
    index = _NameIndex(name_keys_table(names, names, [None] * len(names)))
    found = {(row, distance) for row, _, distance in index.typos("ripgrpe", 2, 200)}
    assert (len(names) - 1, 1) in found


def test_without_pair_signatures_typos_come_from_the_fuzzy_index(
    minified_sample: Path, tmp_path: Path
) -> None:
    import lancedb

    copy = tmp_path / "old.lancedb"
    shutil.copytree(minified_sample, copy)
    db = lancedb.connect(str(copy))
    keys = db.open_table("name_keys").to_arrow().drop_columns(["grams"])
    db.create_table("name_keys", data=keys, mode="overwrite")
    old = PackageSearch.open(str(copy))
    assert old.names.grams is None
    assert top(old, "memcahced")[0] == "memcached"
    assert top(old, "gnumerc")[0] == "gnumeric"


def test_a_query_naming_an_ecosystem_prefers_its_package_set(engine: PackageSearch) -> None:
    assert engine._ecosystems_named("python test framework") == ["python"]
    assert engine._ecosystems_named("pythonic test framework") == []
    named = top(engine, "python test framework", limit=5)
    assert all(a.startswith("python313Packages.") for a in named), named
    assert not all(
        a.startswith("python313Packages.") for a in top(engine, "test framework", limit=5)
    )


def test_without_words_drops_only_tokens_made_of_the_words() -> None:
    words = frozenset({"node", "js", "javascript"})
    assert without_words("JavaScript test framework", words) == "test framework"
    assert without_words("node.js test runner", words) == "test runner"
    assert without_words("nodemon for js", words) == "nodemon for"
    assert without_words("javascript", words) == ""


def test_a_named_ecosystems_packages_are_retrieved_among_themselves(tmp_path: Path) -> None:
    # Sixty packages of other languages say all three words; the one JavaScript test
    # framework says "testing framework" and loses every BM25 ranking over all packages.
    entries = [
        search_support.package(f"jsunit{i}", f"JavaScript test framework port number {i}")
        for i in range(60)
    ]
    entries += [
        search_support.package(f"nodePackages.filler{i}", f"Left pad variant {i}")
        for i in range(200)
    ]
    apache = {"spdxId": "Apache-2.0", "shortName": "asl20", "fullName": "Apache 2.0", "free": True}
    entries.append(
        search_support.package("nodePackages.vitest", "Next testing framework", license=apache)
    )
    vectors = {attr_path: search_support.unit(i) for i, (attr_path, _) in enumerate(entries)}
    path = search_support.listing_dataset(tmp_path, "eco", entries, vectors)
    search = PackageSearch.open(str(path))
    assert search.package_sets == {"nodePackages": "node"}
    assert top(search, "javascript test framework", use_vectors=False)[0] == "nodePackages.vitest"
    response = search.search("javascript test framework")
    assert response.results[0].attr_path == "nodePackages.vitest"
    assert "ecosystem" in response.timings_ms
    # Filters hold for the ecosystem's own candidates too.
    mit_only = top(search, "javascript test framework", filters=SearchFilters(licenses=("MIT",)))
    assert mit_only and "nodePackages.vitest" not in mit_only


def test_a_famous_package_past_the_nearest_is_still_a_candidate(tmp_path: Path) -> None:
    query = "organize my pictures"
    direction = search_support.fresh_query_embedder().embed(query)

    def similar(similarity: float, seed: int) -> np.ndarray:
        noise = search_support.unit(seed)
        noise -= (noise @ direction) * direction
        noise /= np.linalg.norm(noise)
        return (similarity * direction + np.sqrt(1 - similarity**2) * noise).astype(np.float32)

    # Sixty lookalikes nearer than the famous one; twenty add-ons name only the famous one.
    entries = [search_support.package(f"tool{i}", f"Utility number {i}") for i in range(60)]
    vectors = {f"tool{i}": similar(0.56 - i * 0.0005, i) for i in range(60)}
    entries.append(search_support.package("famous", "Well known utility"))
    vectors["famous"] = similar(0.53, 100)
    entries += [search_support.package(f"addon{i}", f"Extension for famous {i}") for i in range(20)]
    vectors |= {f"addon{i}": similar(0.0, 200 + i) for i in range(20)}
    path = search_support.listing_dataset(tmp_path, "famous", entries, vectors)
    for warm in (False, True):
        search = PackageSearch.open(str(path))
        if warm:
            search.warm_up(background=False)
            assert search.vector_backend == "memory"
        response = search.search(query)
        assert response.results[0].attr_path == "famous", (warm, top(search, query))
        assert response.results[0].matched == ["semantic"]


MATCHES_EVERY_WORD = "converts spreadsheets into calendars"


def open_alpha_and_beta(tmp_path: Path, alpha_has_a_vector: bool) -> PackageSearch:
    """ "alpha" says every word of MATCHES_EVERY_WORD; "beta" installs a program (a prior) and
    says one; thirty fillers say none. Vectors are random: unrelated to any query."""
    entries = [
        search_support.package("alpha", "Converts spreadsheets into calendars"),
        search_support.package("beta", "Converts audio", mainProgram="beta"),
        *(search_support.package(f"filler{i}", f"Plays chess variant {i}") for i in range(30)),
    ]
    vectors: dict[str, np.ndarray | None] = {
        attr_path: search_support.unit(i) for i, (attr_path, _) in enumerate(entries)
    }
    if not alpha_has_a_vector:
        vectors["alpha"] = None
    name = "bm25" if alpha_has_a_vector else "part"
    return PackageSearch.open(str(search_support.listing_dataset(tmp_path, name, entries, vectors)))


def test_without_a_query_vector_bm25_outweighs_the_priors(tmp_path: Path) -> None:
    search = open_alpha_and_beta(tmp_path, alpha_has_a_vector=True)
    response = search.search(MATCHES_EVERY_WORD, use_vectors=False)
    assert response.mode == "text"
    assert [r.attr_path for r in response.results] == ["alpha", "beta"]


def test_a_package_without_a_vector_is_judged_by_bm25_alone(tmp_path: Path) -> None:
    # After a partial embedding run "alpha" has no vector.
    search = open_alpha_and_beta(tmp_path, alpha_has_a_vector=False)
    assert search.partly_embedded and search.vector_count == search.rows - 1
    response = search.search(MATCHES_EVERY_WORD)
    assert response.mode == "hybrid"
    assert [r.attr_path for r in response.results][:2] == ["alpha", "beta"]


def test_of_two_equally_good_packages_the_one_others_mention_ranks_first(
    tmp_path: Path,
) -> None:
    entries = [
        search_support.package("kestrel", "Sorts holiday photos into albums"),
        search_support.package("osprey", "Sorts holiday photos into albums"),
        *(
            search_support.package(f"addon{i}", f"Extension number {i} for kestrel")
            for i in range(4)
        ),
    ]
    vectors = {"kestrel": search_support.unit(1), "osprey": search_support.unit(1)}
    vectors |= {f"addon{i}": search_support.unit(10 + i) for i in range(4)}
    path = search_support.listing_dataset(tmp_path, "fame", entries, vectors)
    search = PackageSearch.open(str(path))
    assert search.popularity[search.columns["attr_path"].to_pylist().index("kestrel")] > 0
    # Without mentions the shorter path would win the tie.
    assert top(search, "sorts holiday photos")[:2] == ["kestrel", "osprey"]


def test_lancedb_loads_without_the_rest_namespace_api_which_still_works() -> None:
    script = (
        "import sys\n"
        "import fdnix_assets.search\n"
        "api = sys.modules['lance_namespace_urllib3_client.api.table_api']\n"
        "print(type(api).__name__)\n"
        "import lance_namespace_urllib3_client as client\n"
        "print(type(client.TableApi(client.ApiClient())).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["_DeferredApiModule", "TableApi"]


def test_bedrock_dataset_embeds_queries_with_invoke_model(
    tmp_path: Path, bedrock_standin: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .bedrock_standin import titan_embedding

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    entries = [
        search_support.package("qux", "Turns coffee into code"),
        search_support.package("quux", "Paints fences white"),
        search_support.package("corge", "Sorts socks by colour"),
    ]
    texts = {"qux": "a tool for programmers", "quux": "garden work", "corge": "laundry help"}
    vectors = {a: np.asarray(titan_embedding(t, 256), np.float32) for a, t in texts.items()}
    path = search_support.listing_dataset(
        tmp_path, "titan", entries, vectors, "amazon.titan-embed-text-v2:0", 256, "bedrock"
    )
    search = PackageSearch.open(str(path))
    assert isinstance(search.embedder, BedrockQueryEmbedder)
    response = search.search("garden work", limit=3)
    assert response.mode == "hybrid"
    # No word in common with any description: only the vector can put quux first.
    assert response.results[0].attr_path == "quux"
    assert response.results[0].matched == ["semantic"]
    assert bedrock_standin.invoke_model_calls >= 1  # type: ignore[attr-defined]


def test_bedrock_unreachable_falls_back_to_text(
    tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import free_port

    # Nothing listens there: InvokeModel fails at once, as when Bedrock is unreachable.
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{free_port()}")
    vectors = {"qux": search_support.unit(1, 256), "quux": search_support.unit(2, 256)}
    entries = [
        search_support.package("qux", "Turns coffee into code"),
        search_support.package("quux", "Paints fences white"),
    ]
    path = search_support.listing_dataset(
        tmp_path, "titan", entries, vectors, "amazon.titan-embed-text-v2:0", 256, "bedrock"
    )
    search = PackageSearch.open(str(path))
    response = search.search("fences", limit=3)
    assert response.mode == "text"
    assert "InvokeModel" in (response.note or "")
    assert response.results[0].attr_path == "quux"


def test_a_reader_opened_through_the_latest_link_survives_the_next_publish(
    minified_sample: Path, tmp_path: Path
) -> None:
    # The local store's layout: a symbolic link to the latest snapshot directory.
    first = tmp_path / "snapshots" / "first"
    shutil.copytree(minified_sample, first)
    latest = tmp_path / "fdnix.lancedb"
    latest.symlink_to(first)
    reader = PackageSearch.open(str(latest))
    before = top(reader, "ripgrep")
    # The next publish: a different dataset (other data files) and the link moved to it.
    second = tmp_path / "snapshots" / "second"
    lancedb.connect(str(second)).create_table("packages", data=[{"attr_path": "other"}])
    replacement = tmp_path / "fdnix.lancedb.next"
    replacement.symlink_to(second)
    replacement.replace(latest)

    assert top(reader, "ripgrep") == before
    assert before[0] == "ripgrep"
