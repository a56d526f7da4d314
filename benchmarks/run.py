"""Runs the fdnix pipeline on a package listing and prints what it measured, as JSON.

    python benchmarks/run.py --input ../shared/fixtures/nixpkgs-realistic.json.zst \
        [--workdir DIR] [--embed-sample N] [--skip PHASE ...]

Each phase runs in a child process of its own, so ``*_peak_rss_mb`` is that phase's peak and
not the sum of everything before it. The datasets are left in the work directory as
``fdnix-data.lancedb`` and ``fdnix.lancedb``. The last line of output is one JSON object
with the keys of SPEC "Benchmark".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PHASES = ("metadata", "embedding", "storage", "minified", "search", "layer")


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, from /proc."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _tree_rss_bytes(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # the process ended between listing and reading
    return total


class TreePeakRss:
    """Samples the resident memory of this process and its workers together, every 50 ms.

    ``ru_maxrss`` only knows each process's own peak; the phase normalizes in worker
    processes, and what matters is how much all of them hold at the same moment.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _tree_rss_bytes(os.getpid()))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreePeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


def baseline_parse(input_path: str) -> dict[str, Any]:
    """Decompress + ``orjson.loads`` of the same file: the yardstick for ``metadata_s``."""
    import orjson

    from fdnix_assets.nix.extract import decompress_file

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / "listing.json"
        decompress_file(Path(input_path), plain, name=input_path)
        packages = orjson.loads(plain.read_bytes())
    return {
        "packages": len(packages),
        "baseline_parse_s": round(time.perf_counter() - started, 3),
        "baseline_peak_rss_mb": _peak_rss_mb(),
    }


def metadata_phase(input_path: str, workdir: str) -> dict[str, Any]:
    """The ``nixpkgs_packages`` asset through Dagster, as ``metadata_job`` runs it."""
    from dagster import materialize

    from fdnix_assets.assets.metadata import nixpkgs_packages
    from fdnix_assets.definitions import build_resources
    from fdnix_assets.settings import load_settings

    settings = load_settings(
        {
            "NIXPKGS_JSON": input_path,
            "OUTPUT_PATH": str(Path(workdir) / "fdnix-data.lancedb"),
            "OUTPUT_MINIFIED_PATH": str(Path(workdir) / "fdnix.lancedb"),
        }
    )
    started = time.perf_counter()
    with TreePeakRss() as tree_rss:
        result = materialize([nixpkgs_packages], resources=build_resources(settings))
    wall = time.perf_counter() - started
    metadata = result.asset_materializations_for_node("nixpkgs_packages")[0].metadata
    return {
        "packages": metadata["dagster/row_count"].value,
        # Decode, normalize and write, as the asset timed it; the run's wall time adds
        # Dagster's start-up and the snapshot publish.
        "metadata_s": metadata["total_seconds"].value,
        "metadata_run_s": round(wall, 3),
        # The larger of the sampled whole-tree peak and this process's own exact peak.
        "metadata_peak_rss_mb": max(tree_rss.peak_mb, _peak_rss_mb()),
        "metadata_peak_rss_main_mb": _peak_rss_mb(),
        "metadata_workers": metadata["normalize_workers"].value,
    }


def _optional(module: str, function: str) -> Callable[..., dict[str, Any]] | None:
    """A phase measured by a benchmark module that may not exist yet in this checkout."""
    path = Path(__file__).resolve().parent / f"{module}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"benchmarks.{module}", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, function, None)


def _in_child(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Runs ``target`` in a fresh process and returns its result (or raises its error)."""
    # Not multiprocessing.Pool: its workers are daemons, which may not start processes of
    # their own (the metadata phase normalizes in several).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(target, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="a nix-env listing (.json, .zst, ...)")
    parser.add_argument("--workdir", default=None, help="where the datasets are left")
    parser.add_argument("--embed-sample", type=int, default=None, help="embed only N packages")
    parser.add_argument("--skip", nargs="*", default=[], choices=PHASES)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fdnix-bench-")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = str(Path(args.input).absolute())

    results: dict[str, Any] = {"input": input_path, "workdir": str(workdir)}
    results |= _in_child(baseline_parse, input_path)
    print(json.dumps(results), flush=True)
    if "metadata" not in args.skip:
        results |= _in_child(metadata_phase, input_path, str(workdir))
        results["metadata_vs_baseline"] = round(
            results["metadata_s"] / results["baseline_parse_s"], 2
        )
        print(json.dumps(results), flush=True)

    optional_phases = [
        ("embedding", "embedding_bench", "run_embedding_benchmark"),
        ("storage", "storage_throughput", "measure_storage_throughput"),
        ("minified", "search_bench", "run_minified_benchmark"),
        ("search", "search_bench", "run_search_benchmark"),
        ("layer", "layer_bench", "run_layer_benchmark"),
    ]
    for phase, module, function in optional_phases:
        if phase in args.skip:
            continue
        measure = _optional(module, function)
        if measure is None:
            results[f"{phase}_status"] = f"not measured: benchmarks/{module}.py:{function} missing"
            continue
        results |= _in_child(_run_optional, module, function, str(workdir), args.embed_sample)
        print(json.dumps(results), flush=True)

    print(json.dumps(results))
    return 0


def _run_optional(
    module: str, function: str, workdir: str, embed_sample: int | None
) -> dict[str, Any]:
    measure = _optional(module, function)
    assert measure is not None
    return measure(Path(workdir), embed_sample=embed_sample)


if __name__ == "__main__":
    sys.exit(main())
