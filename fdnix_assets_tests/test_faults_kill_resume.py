"""The run process killed with SIGKILL in each phase, then rerun.

Every test runs the real container entry point (``python -m fdnix_assets.entrypoint`` with
``PROCESSING_MODE=full``) as a subprocess on a 20-package listing, with the local MiniLM
backend, after a first complete run (the "previous good" snapshots). A second listing changes
three descriptions, drops one package and adds two, so the killed run has five texts to embed.
After each kill the tests check that readers still get complete snapshots (the minified
dataset users search is still the previous good one) and that nothing half-written sits where
readers look; then a rerun must succeed with complete datasets (one row per package, unique
attribute paths, every row with a vector) and must not embed any unchanged package again.

Where the kill lands: the points last milliseconds on 20 packages, so the process is first
paused at a named function of the real code and killed there: ``PAUSE_RUNNER`` below wraps
that one function (and can set a module constant, such as the local embedder's chunk size),
then runs the entry point unchanged (``runpy``). Nothing in the production code knows about
it.

What the embedding phase keeps of a killed run: every chunk it embedded. Each chunk's vectors
go to the embedding checkpoint in the work directory as soon as they exist; the rerun takes
them from there and embeds only the rest, and the checkpoint is deleted once the dataset is
published. The embedding kill lands right after the first chunk (of two texts) is
checkpointed, so across the killed run and its rerun every new text is embedded exactly once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from dagster import AssetKey, DagsterInstance

from fdnix_assets.embedding.checkpoint import EmbeddingCheckpoint
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID
from fdnix_assets.storage import ABANDONED_AFTER, PARTIAL_PREFIX, LocalDatasetStore
from fdnix_assets.storage_s3 import MANIFEST_NAME, S3DatasetStore
from fdnix_assets_tests.conftest import REPO_ROOT, RUN_CONFIG_VARIABLES, SAMPLE_LISTING

RUN_TIMEOUT_SECONDS = 240
LISTING_SIZE = 20
MAIN = "fdnix-data.lancedb"
MINIFIED = "fdnix.lancedb"
DATA_KEY = "snapshots/fdnix-data.lancedb"
MINIFIED_KEY = "snapshots/fdnix.lancedb"
RUN_ID_RE = re.compile(r" - full_job - ([0-9a-f]{8}-[0-9a-f-]{27}) - ")

PAUSE_RUNNER = '''\
"""Runs the fdnix entry point with one function paused (see test_faults_kill_resume.py).

argv: module, attribute (dotted under the module), "before" or "after" the call, a text one
argument must contain ("" for any call), the marker file to write once paused, a file whose
appearance ends the pause ("" to stay paused until killed), and module constants to set first
("module:NAME=integer,...", or "").
"""
import functools
import importlib
import os
import runpy
import sys
import time
from pathlib import Path

module_name, attribute, moment, argument_text, marker, release, constants = sys.argv[1:8]
del sys.argv[1:8]
for assignment in filter(None, constants.split(",")):
    target, value = assignment.split("=")
    constant_module, constant = target.split(":")
    setattr(importlib.import_module(constant_module), constant, int(value))
owner = importlib.import_module(module_name)
*parents, name = attribute.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original = getattr(owner, name)


def pause():
    Path(marker).write_text(str(os.getpid()))
    while not (release and Path(release).exists()):
        time.sleep(0.05)


@functools.wraps(original)
def paused(*args, **kwargs):
    chosen = not argument_text or any(
        argument_text in str(value) for value in args if isinstance(value, (str, os.PathLike))
    )
    if chosen and moment == "before":
        pause()
    result = original(*args, **kwargs)
    if chosen:
        pause()
    return result


setattr(owner, name, paused)
runpy.run_module("fdnix_assets.entrypoint", run_name="__main__", alter_sys=True)
'''


@dataclass(frozen=True)
class PausePoint:
    """A function of the real code where a run is held until the test kills it."""

    module: str
    attribute: str
    moment: str = "after"
    argument_text: str = ""
    constants: str = ""
    """Module constants the paused run uses ("module:NAME=integer,...")."""


# The metadata phase has written its dataset to scratch space and not yet published it.
METADATA_WRITTEN = PausePoint("fdnix_assets.datasets", "write_packages")
# The embedding phase has embedded its first chunk (two texts: the local embedder's chunk
# size is set to 2) and written it to the checkpoint; the other chunks are not embedded.
EMBEDDING_CHUNK_SIZE = 2
FIRST_CHUNK_CHECKPOINTED = PausePoint(
    "fdnix_assets.embedding.checkpoint",
    "EmbeddingCheckpoint.append",
    constants=f"fdnix_assets.embedding.local:CHUNK_SIZE={EMBEDDING_CHUNK_SIZE}",
)
# The minified dataset was moved next to the snapshots as ".partial-<id>", not yet renamed
# into place nor pointed to: the middle of a local publish.
MINIFIED_MID_PUBLISH = PausePoint(
    "fdnix_assets.storage", "tree_listing", "before", f"{MINIFIED}/{PARTIAL_PREFIX}"
)
# Every file of the main dataset's new snapshot is in S3 and verified; no manifest, no pointer.
S3_MAIN_UPLOADED = PausePoint("fdnix_assets.storage_s3", "S3DatasetStore._verify_uploaded")
# The layer zip is uploaded to the artifacts bucket; no layer version published yet.
LAYER_ZIP_UPLOADED = PausePoint("fdnix_assets.layer", "upload_layer_zip")


@dataclass(frozen=True)
class Listings:
    """The listing of the first run, and the next day's with five texts to embed."""

    base: dict[str, Any]
    changed: dict[str, Any]
    unchanged: frozenset[str]

    @property
    def new_texts(self) -> int:
        return len(self.changed) - len(self.unchanged)


def make_listings() -> Listings:
    packages = json.loads(SAMPLE_LISTING.read_bytes())
    names = [name for name in list(packages)[::50] if isinstance(packages[name].get("meta"), dict)]
    base = {name: packages[name] for name in names[:LISTING_SIZE]}
    changed = copy.deepcopy(base)
    for name in names[:3]:
        changed[name]["meta"]["description"] = f"Rewritten description of {name} for a rerun"
    del changed[names[3]]
    for name in names[LISTING_SIZE : LISTING_SIZE + 2]:
        changed[name] = packages[name]
    return Listings(base, changed, frozenset(names[4:LISTING_SIZE]))


def write_listing(path: Path, packages: dict[str, Any]) -> Path:
    path.write_text(json.dumps(packages), encoding="utf-8")
    return path


def new_dagster_home(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", directory / "dagster.yaml")
    return directory


def job_env(
    out: Path, listing: Path, dagster_home: Path | None, **variables: str
) -> dict[str, str]:
    """The environment of a full run writing under ``out``; AWS settings come from os.environ."""
    env = {name: value for name, value in os.environ.items() if name not in RUN_CONFIG_VARIABLES}
    env |= {
        "PROCESSING_MODE": "full",
        "NIXPKGS_JSON": str(listing),
        "OUTPUT_PATH": str(out / MAIN),
        "OUTPUT_MINIFIED_PATH": str(out / MINIFIED),
        "EMBEDDING_BACKEND": "local",
        "HF_HUB_OFFLINE": "1",
        "LANCEDB_LOG": "error",
    }
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env | variables


def start_run(
    env: dict[str, str],
    log: Path,
    pause: PausePoint | None = None,
    command: list[str] | None = None,
    release: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a run in its own process group, output to ``log``; paused at ``pause`` if given
    (until ``release`` exists, or for good)."""
    if command is None:
        command = [sys.executable, "-m", "fdnix_assets.entrypoint"]
    if pause is not None:
        runner = log.parent / f"pause-runner-{uuid.uuid4().hex[:8]}.py"
        runner.write_text(PAUSE_RUNNER, encoding="utf-8")
        command = [
            sys.executable,
            str(runner),
            pause.module,
            pause.attribute,
            pause.moment,
            pause.argument_text,
            str(pause_marker(log)),
            str(release or ""),
            pause.constants,
        ]
    with log.open("wb") as handle:
        return subprocess.Popen(
            command,
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def pause_marker(log: Path) -> Path:
    return log.with_suffix(".paused")


def wait_for(
    process: subprocess.Popen[bytes], log: Path, condition: Callable[[], bool], what: str
) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"the run exited ({process.returncode}) before {what}:\n{tail(log)}"
            )
        if time.monotonic() > deadline:
            kill_run(process)
            raise AssertionError(f"timed out waiting for {what}:\n{tail(log)}")
        time.sleep(0.05)


def kill_run(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the run's whole process group: no handler, no cleanup, like the OOM killer."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def run_killed_at(env: dict[str, str], log: Path, pause: PausePoint) -> str:
    """Runs until ``pause`` is reached, kills the run there; returns the killed run's id."""
    process = start_run(env, log, pause)
    marker = pause_marker(log)
    wait_for(process, log, marker.exists, f"the run reached {pause.attribute}")
    kill_run(process)
    assert process.returncode == -signal.SIGKILL
    return run_id_in(log)


def run_to_success(env: dict[str, str], log: Path) -> str:
    process = start_run(env, log)
    try:
        process.wait(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        kill_run(process)
        raise AssertionError(f"the run did not finish:\n{tail(log)}") from None
    assert process.returncode == 0, tail(log)
    return run_id_in(log)


def run_id_in(log: Path) -> str:
    found = RUN_ID_RE.search(log.read_text(errors="replace"))
    assert found, f"no full_job run id in the output:\n{tail(log)}"
    return found.group(1)


def run_of(snapshot_id: str) -> str:
    """The run id prefix in a snapshot id (``<stamp>-<run id prefix>-<stamp>``)."""
    return snapshot_id.split("-")[1]


def tail(log: Path, characters: int = 4000) -> str:
    return log.read_text(errors="replace")[-characters:] if log.exists() else "(no output)"


def embedding_metadata(dagster_home: Path, run_id: str) -> dict[str, Any]:
    """What package_embeddings recorded in ``run_id`` (texts embedded, reused, ...)."""
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.fetch_materializations(AssetKey("package_embeddings"), limit=20).records
        for record in records:
            if record.run_id == run_id:
                materialization = record.asset_materialization
                assert materialization is not None
                return {key: value.value for key, value in materialization.metadata.items()}
    raise AssertionError(f"run {run_id} recorded no package_embeddings materialization")


def read_table(uri: str | Path, **storage_options: str) -> pa.Table:
    options = {"storage_options": storage_options} if storage_options else {}
    return lancedb.connect(str(uri), **options).open_table("packages").to_arrow()


def vectors_by_path(table: pa.Table) -> dict[str, np.ndarray]:
    return {
        path: np.asarray(vector, dtype=np.float32)
        for path, vector in zip(
            table["attr_path"].to_pylist(), table["vector"].to_pylist(), strict=True
        )
        if vector is not None
    }


def assert_complete(table: pa.Table, packages: dict[str, Any], where: str) -> None:
    """One row per package, attribute paths unique and exactly the listing's, every vector."""
    paths = table["attr_path"].to_pylist()
    assert len(paths) == len(packages), f"{where}: {len(paths)} rows for {len(packages)} packages"
    assert len(set(paths)) == len(paths), f"{where}: duplicate attribute paths"
    assert set(paths) == set(packages), f"{where}: rows differ from the listing"
    assert table["vector"].null_count == 0, f"{where}: {table['vector'].null_count} null vectors"


def age_tree(root: Path, by: timedelta) -> None:
    """Makes ``root`` and everything under it look untouched for ``by``."""
    then = time.time() - by.total_seconds()
    for path in [root, *root.rglob("*")]:
        os.utime(path, (then, then), follow_symlinks=False)


def snapshot_id_of(pointer: Path) -> str:
    assert pointer.is_symlink(), f"{pointer} is not a snapshot pointer"
    return pointer.resolve().name


def visible_snapshots(out: Path, dataset: str) -> list[str]:
    return LocalDatasetStore(out / dataset).list_snapshots()


def leftovers(out: Path) -> list[str]:
    """What runs left behind beside the snapshots: partial snapshots, non-empty scratch dirs."""
    found = [
        path.relative_to(out).as_posix()
        for path in (out / ".fdnix-snapshots").glob(f"*/{PARTIAL_PREFIX}*")
    ]
    work = out / ".fdnix-work"
    if work.is_dir():
        found += [
            path.relative_to(out).as_posix()
            for path in work.iterdir()
            if any(entry.is_file() for entry in path.rglob("*"))
        ]
    return sorted(found)


@pytest.fixture(scope="module")
def listings() -> Listings:
    return make_listings()


def assert_every_visible_snapshot_opens(out: Path, listings: Listings) -> None:
    """No half-written dataset among the snapshots a pointer could name."""
    for dataset in (MAIN, MINIFIED):
        for snapshot_id in visible_snapshots(out, dataset):
            table = read_table(out / ".fdnix-snapshots" / dataset / snapshot_id)
            paths = table["attr_path"].to_pylist()
            assert len(set(paths)) == len(paths)
            assert set(paths) in (set(listings.base), set(listings.changed)), (
                f"{dataset} snapshot {snapshot_id} holds neither listing"
            )


def test_killed_in_each_phase_every_rerun_resumes_and_nothing_is_embedded_twice(
    tmp_path: Path, listings: Listings
) -> None:
    """Local storage: a good run, then runs killed in metadata, embedding and mid-publish of
    the minified dataset, each one the rerun of the one before, then a run to the end."""
    out = tmp_path / "out"
    home = new_dagster_home(tmp_path / "dagster-home")
    base_env = job_env(out, write_listing(tmp_path / "base.json", listings.base), home)
    env = job_env(out, write_listing(tmp_path / "changed.json", listings.changed), home)

    first = run_to_success(base_env, tmp_path / "first.log")
    assert embedding_metadata(home, first)["texts_embedded"] == LISTING_SIZE
    good_main, good_minified = read_table(out / MAIN), read_table(out / MINIFIED)
    assert_complete(good_main, listings.base, "main dataset of the good run")
    assert_complete(good_minified, listings.base, "minified dataset of the good run")
    good_main_id, good_minified_id = snapshot_id_of(out / MAIN), snapshot_id_of(out / MINIFIED)

    def assert_users_see_the_good_run() -> None:
        # The minified dataset users search is still the good run's snapshot, row for row.
        assert snapshot_id_of(out / MINIFIED) == good_minified_id
        assert visible_snapshots(out, MINIFIED) == [good_minified_id]
        assert read_table(out / MINIFIED).equals(good_minified)
        assert_every_visible_snapshot_opens(out, listings)

    # 1. Metadata: the dataset is written to scratch space, not published. Nothing moved.
    killed_in_metadata = run_killed_at(env, tmp_path / "killed-metadata.log", METADATA_WRITTEN)
    assert (out / ".fdnix-work" / killed_in_metadata / MAIN / "packages.lance").is_dir()
    assert snapshot_id_of(out / MAIN) == good_main_id
    assert read_table(out / MAIN).equals(good_main)
    assert_users_see_the_good_run()

    # 2. Embedding, killed right after its first chunk of two texts was embedded and
    # checkpointed, the other three not embedded yet. This run's metadata phase resumed and
    # published the new listing: vectors carried over for the unchanged packages, null for
    # the five new texts.
    killed_in_embedding = run_killed_at(
        env, tmp_path / "killed-embedding.log", FIRST_CHUNK_CHECKPOINTED
    )
    assert (out / ".fdnix-work" / killed_in_embedding / "embeddings" / MAIN).is_dir()
    assert run_of(snapshot_id_of(out / MAIN)) == killed_in_embedding[:8]
    main = read_table(out / MAIN)
    assert set(main["attr_path"].to_pylist()) == set(listings.changed)
    assert main["vector"].null_count == listings.new_texts
    needing_vectors = {
        digest
        for digest, vector in zip(
            main["content_hash"].to_pylist(), main["vector"].to_pylist(), strict=True
        )
        if vector is None
    }
    assert len(needing_vectors) == listings.new_texts
    checkpoint = EmbeddingCheckpoint(out / ".fdnix-work", LOCAL_MODEL_ID, LOCAL_MODEL_DIMENSIONS)
    embedded_by_killed_run = checkpoint.vector_count()
    assert embedded_by_killed_run == EMBEDDING_CHUNK_SIZE
    assert len(checkpoint.vectors_for(needing_vectors)) == EMBEDDING_CHUNK_SIZE
    assert good_main_id in visible_snapshots(out, MAIN)
    assert_users_see_the_good_run()

    # 3. Minified, mid-publish: moved beside the snapshots as ".partial-<id>", not renamed
    # into place nor pointed to. This run took the killed run's two vectors from the
    # checkpoint, embedded only the other three texts, published, and dropped the checkpoint.
    killed_in_publish = run_killed_at(env, tmp_path / "killed-publish.log", MINIFIED_MID_PUBLISH)
    resumed = embedding_metadata(home, killed_in_publish)
    assert resumed["vectors_from_checkpoint"] == embedded_by_killed_run
    assert resumed["texts_embedded"] == listings.new_texts - embedded_by_killed_run
    # Nothing embedded twice: the killed run and its rerun embedded each new text once.
    assert embedded_by_killed_run + resumed["texts_embedded"] == len(needing_vectors)
    assert "vectors came from the checkpoint" in tail(tmp_path / "killed-publish.log", 10**6)
    assert not checkpoint.directory.exists()
    partial = sorted((out / ".fdnix-snapshots" / MINIFIED).glob(f"{PARTIAL_PREFIX}*"))
    assert (
        len(partial) == 1
        and run_of(partial[0].name[len(PARTIAL_PREFIX) :]) == killed_in_publish[:8]
    ), partial
    assert run_of(snapshot_id_of(out / MAIN)) == killed_in_publish[:8]
    assert_complete(read_table(out / MAIN), listings.changed, "main after the publish kill")
    assert_users_see_the_good_run()

    # 4. To the end: nothing left to embed, both datasets complete for the new listing. The
    # metadata-phase kill's scratch copy is made older than ABANDONED_AFTER first: the first
    # dataset step of this run removes it (the embedding kill's copy is younger and stays).
    age_tree(out / ".fdnix-work" / killed_in_metadata, ABANDONED_AFTER + timedelta(hours=1))
    last = run_to_success(env, tmp_path / "last.log")
    assert not (out / ".fdnix-work" / killed_in_metadata).exists()
    assert killed_in_metadata in tail(tmp_path / "last.log", 10**6)
    metadata = embedding_metadata(home, last)
    assert (metadata["texts_embedded"], metadata["texts_reused"]) == (0, len(listings.changed))
    main, minified = read_table(out / MAIN), read_table(out / MINIFIED)
    assert_complete(main, listings.changed, "main dataset at the end")
    assert_complete(minified, listings.changed, "minified dataset at the end")
    assert run_of(snapshot_id_of(out / MAIN)) == last[:8]
    assert run_of(snapshot_id_of(out / MINIFIED)) == last[:8]
    # Unchanged packages kept the very vectors the good run computed.
    before, after = vectors_by_path(good_main), vectors_by_path(main)
    for path in listings.unchanged:
        np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    # Texts embedded by completed embedding steps: each text of both listings exactly once.
    assert LISTING_SIZE + listings.new_texts == len(
        set(good_main["content_hash"].to_pylist()) | set(main["content_hash"].to_pylist())
    )

    # What the kills left behind: the young scratch copy of the run killed in embedding, and
    # the partial minified directory (both removed once older than ABANDONED_AFTER); no
    # embedding checkpoint. None of it is where a reader looks, and none disturbed a rerun.
    assert leftovers(out) == sorted(
        [
            f".fdnix-snapshots/{MINIFIED}/{partial[0].name}",
            f".fdnix-work/{killed_in_embedding}",
        ]
    )


def s3_store(bucket: str, prefix: str, dataset: str) -> S3DatasetStore:
    return S3DatasetStore(boto3.client("s3"), bucket, prefix, dataset)


def s3_keys(bucket: str, prefix: str) -> list[str]:
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def layer_zips(bucket: str) -> list[str]:
    """Objects outside the dataset prefixes: the layer zips."""
    return [key for key in s3_keys(bucket, "") if not key.startswith("snapshots/")]


def read_s3_latest(store: S3DatasetStore) -> tuple[str, pa.Table]:
    snapshot = store.latest()
    assert snapshot is not None, f"no pointer at {store.location}"
    return snapshot.snapshot_id, read_table(snapshot.uri, **snapshot.storage_options)


def test_s3_kills_mid_upload_and_mid_layer_publish_then_resume(
    tmp_path: Path, s3_bucket: str, listings: Listings
) -> None:
    """ARTIFACTS_BUCKET on the moto server, layer publishing on: kill in both S3 phases."""
    out = tmp_path / "out"
    home = new_dagster_home(tmp_path / "dagster-home")
    layer_name = f"fdnix-kill-{uuid.uuid4().hex[:8]}"
    layer_arn = f"arn:aws:lambda:us-east-1:123456789012:layer:{layer_name}"
    s3_variables = {
        "ARTIFACTS_BUCKET": s3_bucket,
        "PUBLISH_LAYER": "true",
        "LAYER_ARN": layer_arn,
    }
    base_env = job_env(
        out, write_listing(tmp_path / "base.json", listings.base), home, **s3_variables
    )
    env = job_env(
        out, write_listing(tmp_path / "changed.json", listings.changed), home, **s3_variables
    )
    main_store = s3_store(s3_bucket, DATA_KEY, MAIN)
    minified_store = s3_store(s3_bucket, MINIFIED_KEY, MINIFIED)
    lambda_client = boto3.client("lambda")

    first = run_to_success(base_env, tmp_path / "first.log")
    main_id, main_before = read_s3_latest(main_store)
    minified_id, minified_before = read_s3_latest(minified_store)
    assert_complete(main_before, listings.base, "main dataset in S3")
    assert run_of(main_id) == first[:8]
    versions = lambda_client.list_layer_versions(LayerName=layer_name)["LayerVersions"]
    assert [version["Version"] for version in versions] == [1]
    assert minified_id in versions[0]["Description"]

    # 1. Killed with every file of the new main snapshot uploaded, before its manifest.
    killed = run_killed_at(env, tmp_path / "killed-upload.log", S3_MAIN_UPLOADED)
    prefixes = {key.split("/")[3] for key in s3_keys(s3_bucket, f"{DATA_KEY}/snapshots/")}
    incomplete = [snapshot_id for snapshot_id in prefixes if run_of(snapshot_id) == killed[:8]]
    assert len(incomplete) == 1, prefixes
    assert not main_store.list_snapshots().count(incomplete[0])
    assert read_s3_latest(main_store) == (main_id, main_before)
    assert read_s3_latest(minified_store) == (minified_id, minified_before)

    # 2. The next run gets through every dataset phase (it embeds the five new texts once),
    # and is killed in the layer phase with the zip uploaded, before a version is published.
    second = run_killed_at(env, tmp_path / "killed-layer.log", LAYER_ZIP_UPLOADED)
    assert embedding_metadata(home, second)["texts_embedded"] == listings.new_texts
    second_main_id, main_after = read_s3_latest(main_store)
    assert run_of(second_main_id) == second[:8]
    assert_complete(main_after, listings.changed, "main dataset in S3 after the rerun")
    killed_minified_id, killed_minified = read_s3_latest(minified_store)
    assert run_of(killed_minified_id) == second[:8]
    assert_complete(killed_minified, listings.changed, "minified in S3 after the layer kill")
    # The incomplete prefix has no manifest, so no pointer can name it.
    assert incomplete[0] not in main_store.list_snapshots()
    # What Lambda serves is still the first run's layer.
    versions = lambda_client.list_layer_versions(LayerName=layer_name)["LayerVersions"]
    assert [version["Version"] for version in versions] == [1]
    assert minified_id in versions[0]["Description"]
    zips_after_kill = layer_zips(s3_bucket)
    assert len(zips_after_kill) == 2, zips_after_kill

    third = run_to_success(env, tmp_path / "third.log")
    assert embedding_metadata(home, third)["texts_embedded"] == 0
    final_minified_id, final_minified = read_s3_latest(minified_store)
    assert_complete(final_minified, listings.changed, "minified in S3 at the end")
    versions = lambda_client.list_layer_versions(LayerName=layer_name)["LayerVersions"]
    newest = max(versions, key=lambda v: v["Version"])
    assert newest["Version"] == 2 and final_minified_id in newest["Description"]
    # The zip the killed run uploaded belongs to no version: the rerun's retention removed it.
    zips = layer_zips(s3_bucket)
    assert len(zips) == 2 and len(set(zips) & set(zips_after_kill)) == 1, zips
    # The killed upload's prefix is still there without a manifest: never listed, never
    # pointed to; a publish deletes it once it is older than ABANDONED_AFTER.
    orphan = s3_keys(s3_bucket, f"{DATA_KEY}/snapshots/{incomplete[0]}/")
    assert orphan and not any(key.endswith(MANIFEST_NAME) for key in orphan)
    assert incomplete[0] not in main_store.list_snapshots()
