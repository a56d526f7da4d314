"""Two runs at once against the same output path and S3 prefixes.

Without the daemon nothing serializes two runs: ``dagster job execute`` and the container
entry point run in process, so the ``fdnix_datasets`` pool and the per-prefix tag limit of
dagster.yaml (enforced by the queued run coordinator) do not apply. What keeps the data
whole is the stores themselves: every publish goes to a fresh snapshot (the id holds the
run id and microsecond stamps), a snapshot becomes visible only once complete (an atomic
symlink rename locally, the manifest and then the pointer object in S3), and the pointer
only moves forward, to a snapshot of the same or a newer run (a lock file locally, a
conditional PUT in S3). Retention keeps the newest seven snapshots and never the pointer's,
so what another run or a reader opened stays.

Without that forward-only rule the whole-run test below ends with the main dataset of one
run and the minified dataset (what users search) of the other: the older run published its
minified dataset last and overwrote the pointer (found and fixed with this test).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import lancedb
import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance

from fdnix_assets.datasets import write_packages
from fdnix_assets.normalize import normalize_listing
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID
from fdnix_assets.storage import DEFAULT_RETENTION, PARTIAL_PREFIX, LocalDatasetStore
from fdnix_assets.storage_s3 import S3DatasetStore
from fdnix_assets_tests.conftest import REPO_ROOT
from fdnix_assets_tests.samples import local_model_provenance
from fdnix_assets_tests.test_faults_kill_resume import (
    DATA_KEY,
    MAIN,
    MINIFIED,
    MINIFIED_KEY,
    RUN_ID_RE,
    RUN_TIMEOUT_SECONDS,
    Listings,
    PausePoint,
    assert_complete,
    job_env,
    kill_run,
    make_listings,
    new_dagster_home,
    pause_marker,
    read_table,
    run_of,
    s3_keys,
    start_run,
    tail,
    wait_for,
    write_listing,
)

# Held before the minified dataset's snapshot goes to S3 (its staged path names "minified").
MINIFIED_PUBLISH = PausePoint(
    "fdnix_assets.storage_s3", "S3DatasetStore.publish", "before", "minified"
)

SEED_SNAPSHOTS = DEFAULT_RETENTION - 1
PUBLISHES_PER_PUBLISHER = 3

PUBLISHER = """\
import shutil
import sys
from pathlib import Path

import boto3

from fdnix_assets.storage import LocalDatasetStore, new_snapshot_id
from fdnix_assets.storage_s3 import S3DatasetStore

source, scratch, count, where = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if where.startswith("s3://"):
    bucket, _, prefix = where[len("s3://") :].partition("/")
    store = S3DatasetStore(boto3.client("s3"), bucket, prefix, Path(prefix).name)
else:
    store = LocalDatasetStore(Path(where))
for number in range(count):
    staged = scratch / f"staged-{number}"
    shutil.copytree(source, staged)
    print(store.publish(staged, new_snapshot_id()).snapshot.snapshot_id, flush=True)
"""


@pytest.fixture(scope="module")
def listings() -> Listings:
    return make_listings()


def write_main_dataset(directory: Path, packages: dict[str, object]) -> Path:
    """A main dataset of ``packages`` as the metadata phase writes it (no vectors yet)."""
    normalized = normalize_listing(
        json.dumps(packages).encode(), model_id=LOCAL_MODEL_ID, dimensions=LOCAL_MODEL_DIMENSIONS
    )
    provenance = local_model_provenance("test seed")
    write_packages(directory, normalized.table, provenance)
    return directory


def run_ids(log: Path) -> set[str]:
    return set(RUN_ID_RE.findall(log.read_text(errors="replace")))


def test_two_full_runs_at_once_end_on_one_runs_complete_datasets(
    tmp_path: Path, s3_bucket: str, listings: Listings
) -> None:
    """The entry point (listing X) and ``dagster job execute`` (listing Y, the next day's) on
    the same bucket, prefixes and output path, after six older snapshots so that retention
    has to delete. The first run is held just before it publishes its minified dataset
    while the second runs from start to end; then it publishes: the interleaving that used
    to leave the main dataset of one run beside the minified dataset of the other."""
    main_store = S3DatasetStore(boto3.client("s3"), s3_bucket, DATA_KEY, MAIN)
    minified_store = S3DatasetStore(boto3.client("s3"), s3_bucket, MINIFIED_KEY, MINIFIED)
    seed = write_main_dataset(tmp_path / "seed" / MAIN, listings.base)
    seeds = [f"2026010{number}T000000000000Z-seed" for number in range(1, SEED_SNAPSHOTS + 1)]
    for snapshot_id in seeds:
        main_store.publish(seed, snapshot_id)
    # A reader that opened the current snapshot before the runs and keeps reading from it.
    held = main_store.require_latest()
    assert held.snapshot_id == seeds[-1]
    reader = lancedb.connect(held.uri, storage_options=held.storage_options).open_table("packages")
    assert reader.count_rows() == len(listings.base)

    out = tmp_path / "out"
    s3 = {"ARTIFACTS_BUCKET": s3_bucket}
    older_home = new_dagster_home(tmp_path / "dagster-home")
    older_env = job_env(out, write_listing(tmp_path / "x.json", listings.base), older_home, **s3)
    newer_env = job_env(out, write_listing(tmp_path / "y.json", listings.changed), None, **s3)
    older_log, newer_log, release = tmp_path / "older.log", tmp_path / "newer.log", tmp_path / "go"
    older = start_run(older_env, older_log, MINIFIED_PUBLISH, release=release)
    # The second run starts once the first is held (so it is the newer run).
    wait_for(older, older_log, pause_marker(older_log).exists, "the minified publish")
    newer = start_run(
        newer_env,
        newer_log,
        command=[
            *(sys.executable, "-m", "dagster", "job", "execute"),
            *("-m", "fdnix_assets", "-j", "full_job"),
        ],
    )
    try:
        newer.wait(timeout=RUN_TIMEOUT_SECONDS)
        release.write_text("the newer run has finished", encoding="utf-8")
        older.wait(timeout=RUN_TIMEOUT_SECONDS)
    finally:
        for process in (older, newer):
            if process.poll() is None:
                kill_run(process)
    assert newer.returncode == 0, f"dagster job execute failed:\n{tail(newer_log)}"
    assert older.returncode == 0, f"the entry point failed:\n{tail(older_log)}"
    (older_run,), (newer_run,) = run_ids(older_log), run_ids(newer_log)

    # Both datasets are the newer run's, complete for its listing: not one dataset per run.
    main_snapshot, minified_snapshot = main_store.require_latest(), minified_store.require_latest()
    assert run_of(main_snapshot.snapshot_id) == newer_run[:8]
    assert run_of(minified_snapshot.snapshot_id) == newer_run[:8]
    main = read_table(main_snapshot.uri, **main_snapshot.storage_options)
    minified = read_table(minified_snapshot.uri, **minified_snapshot.storage_options)
    assert_complete(main, listings.changed, f"main snapshot {main_snapshot.snapshot_id}")
    assert_complete(minified, listings.changed, f"minified {minified_snapshot.snapshot_id}")
    # The older run's minified dataset was stored, complete, and not pointed to; its
    # materialization says which snapshot superseded it.
    minified_ids = minified_store.list_snapshots()
    assert sorted(run_of(snapshot_id) for snapshot_id in minified_ids) == sorted(
        [older_run[:8], newer_run[:8]]
    )
    # What the older run made of its own listing is stored whole, for whoever asks for it.
    own = main_store.newest_of_run(older_run)
    assert own is not None and run_of(own.snapshot_id) == older_run[:8]
    assert_complete(read_table(own.uri, **own.storage_options), listings.base, "older run's")
    with DagsterInstance.from_config(str(older_home)) as instance:
        (record,) = instance.fetch_materializations(AssetKey("minified_dataset"), limit=5).records
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        assert metadata["superseded_by"].value == minified_snapshot.snapshot_id

    # Every publish got its own snapshot: two of the main dataset per run (metadata, then
    # embeddings). Retention deleted the three oldest seeds, nothing else.
    main_ids = main_store.list_snapshots()
    new_main = [snapshot_id for snapshot_id in main_ids if snapshot_id not in seeds]
    assert sorted(run_of(snapshot_id) for snapshot_id in new_main) == sorted(
        [older_run[:8]] * 2 + [newer_run[:8]] * 2
    )
    assert main_ids == sorted(seeds[-(DEFAULT_RETENTION - 4) :] + new_main)
    # Nothing half-written is left under the prefixes: every snapshot has its manifest.
    for store in (main_store, minified_store):
        prefixes = {
            key[len(store.snapshots_prefix) :].split("/")[0]
            for key in s3_keys(s3_bucket, store.snapshots_prefix)
        }
        assert prefixes == set(store.list_snapshots()), f"incomplete snapshots in {store.location}"
    # The reader's snapshot was kept, and reads in full.
    assert held.snapshot_id in main_ids
    assert reader.to_arrow()["attr_path"].to_pylist() == read_table(seed)["attr_path"].to_pylist()
    # Both runs cleaned their scratch space.
    assert not [path for path in (out / ".fdnix-work").rglob("*") if path.is_file()]


def start_publisher(source: Path, scratch: Path, where: str) -> subprocess.Popen[str]:
    """A process publishing ``source`` PUBLISHES_PER_PUBLISHER times to the store at ``where``."""
    scratch.mkdir(parents=True)
    script = scratch / "publisher.py"
    script.write_text(PUBLISHER, encoding="utf-8")
    return subprocess.Popen(
        [
            *(sys.executable, str(script), str(source), str(scratch)),
            *(str(PUBLISHES_PER_PUBLISHER), where),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_latest(store: LocalDatasetStore | S3DatasetStore, scratch: Path) -> tuple[str, pa.Table]:
    """What a reader of the store gets: the pointer's snapshot (from S3, a verified copy)."""
    snapshot = store.require_latest()
    if snapshot.is_local:
        return snapshot.snapshot_id, read_table(snapshot.uri)
    copy = store.checkout(snapshot, scratch / "reader" / snapshot.snapshot_id)
    return snapshot.snapshot_id, read_table(copy)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_publishers_racing_a_reader_never_show_a_partial_or_mixed_snapshot(
    tmp_path: Path, listings: Listings, backend: str, request: pytest.FixtureRequest
) -> None:
    """Two processes publish different datasets to one store while the test reads the
    pointer in a loop: every read is one whole dataset, every publish its own snapshot."""
    datasets = [
        write_main_dataset(tmp_path / "x" / MAIN, listings.base),
        write_main_dataset(tmp_path / "y" / MAIN, listings.changed),
    ]
    expected = [set(listings.base), set(listings.changed)]
    store: LocalDatasetStore | S3DatasetStore
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        store = S3DatasetStore(boto3.client("s3"), bucket, DATA_KEY, MAIN)
        where = f"s3://{bucket}/{DATA_KEY}"
    else:
        store = LocalDatasetStore(tmp_path / "out" / MAIN)
        where = str(store.output_path)
    seed = tmp_path / "seed"
    shutil.copytree(datasets[0], seed)
    seed_id = store.publish(seed, "20260101T000000000000Z-seed").snapshot.snapshot_id

    publishers = [
        start_publisher(dataset, tmp_path / f"publisher-{number}", where)
        for number, dataset in enumerate(datasets)
    ]
    seen: list[str] = []
    while any(publisher.poll() is None for publisher in publishers) or not seen:
        snapshot_id, table = read_latest(store, tmp_path)
        paths = table["attr_path"].to_pylist()
        assert len(paths) == len(set(paths)), "a read saw duplicate attribute paths"
        assert set(paths) in expected, "a read saw rows of neither dataset: a mixed snapshot"
        seen.append(snapshot_id)
    published = []
    for publisher in publishers:
        stdout, stderr = publisher.communicate(timeout=RUN_TIMEOUT_SECONDS)
        assert publisher.returncode == 0, stderr[-3000:]
        published += stdout.split()

    assert len(published) == len(set(published)) == 2 * PUBLISHES_PER_PUBLISHER
    # The reads overlapped the publishes: they saw the pointer move.
    assert set(seen) - {seed_id} and set(seen) <= {seed_id, *published}
    # The pointer only ever moved forward, and ends on the newest snapshot.
    assert seen == sorted(seen)
    # Seven snapshots in all: retention deleted nothing, every one complete and readable.
    assert store.list_snapshots() == sorted([seed_id, *published])
    for snapshot_id in store.list_snapshots():
        snapshot = store.snapshot(snapshot_id) if backend == "s3" else None
        copy = (
            store.checkout(snapshot, tmp_path / "check" / snapshot_id)
            if snapshot is not None
            else store.snapshots_dir / snapshot_id
        )
        assert set(read_table(copy)["attr_path"].to_pylist()) in expected
    # The pointer names the newest publish, whichever finished last.
    assert store.require_latest().snapshot_id == max(published)
    if backend == "s3":
        prefixes = {
            key[len(store.snapshots_prefix) :].split("/")[0]
            for key in s3_keys(bucket, store.snapshots_prefix)
        }
        assert prefixes == set(store.list_snapshots()), "an incomplete snapshot was left"
    else:
        assert not list(store.snapshots_dir.glob(f"{PARTIAL_PREFIX}*"))
