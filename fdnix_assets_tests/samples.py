"""Small package listings cut from the shared 2k sample, for tests that run whole jobs."""

from __future__ import annotations

import json
from pathlib import Path

from fdnix_assets_tests.conftest import SAMPLE_LISTING

SMALL_LISTING_SIZE = 200


def write_small_listing(directory: Path, size: int = SMALL_LISTING_SIZE) -> Path:
    """Every tenth package of the 2k sample, ``size`` of them, in the nix-env shape."""
    packages = json.loads(SAMPLE_LISTING.read_text(encoding="utf-8"))
    chosen = list(packages)[::10][:size]
    path = directory / "nixpkgs-small.json"
    path.write_text(json.dumps({name: packages[name] for name in chosen}), encoding="utf-8")
    return path
