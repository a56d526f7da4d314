"""Measures the Lambda layer built from the minified dataset: zip size and build time.

Called by ``benchmarks/run.py`` (``run_layer_benchmark``) after the minified phase, or
directly::

    python benchmarks/layer_bench.py --workdir WORKDIR

The zip is built exactly as the ``lambda_layer_version`` asset builds it (the dataset plus
the search code) into ``WORKDIR/layer/``; nothing is published.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# Lambda's limit for a function and all its layers, unzipped.
LAMBDA_UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024


def run_layer_benchmark(workdir: Path, embed_sample: int | None = None) -> dict[str, Any]:
    """Builds the layer zip from ``workdir/fdnix.lancedb`` and reports its sizes."""
    from fdnix_assets.layer import build_layer_zip

    code_dir = REPO_ROOT / "fdnix_assets"
    dataset = Path(workdir) / "fdnix.lancedb"
    started = time.perf_counter()
    layer = build_layer_zip(dataset, code_dir, Path(workdir) / "layer" / "fdnix-layer.zip")
    return {
        "layer_zip_bytes": layer.zip_bytes,
        "layer_unzipped_bytes": layer.unzipped_bytes,
        "layer_unzipped_share_of_lambda_limit": round(
            layer.unzipped_bytes / LAMBDA_UNZIPPED_LIMIT_BYTES, 3
        ),
        "layer_build_s": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="holds fdnix.lancedb")
    args = parser.parse_args(argv)
    print(json.dumps(run_layer_benchmark(Path(args.workdir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
