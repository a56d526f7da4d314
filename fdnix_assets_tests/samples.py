"""Small package listings cut from the shared 2k sample, for tests that run whole jobs."""

from __future__ import annotations

import json
from pathlib import Path

from fdnix_assets.datasets import DatasetProvenance
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID
from fdnix_assets_tests.conftest import SAMPLE_LISTING

SMALL_LISTING_SIZE = 200


def write_small_listing(directory: Path, size: int = SMALL_LISTING_SIZE) -> Path:
    """Every tenth package of the 2k sample, ``size`` of them, in the nix-env shape."""
    packages = json.loads(SAMPLE_LISTING.read_text(encoding="utf-8"))
    chosen = list(packages)[::10][:size]
    path = directory / "nixpkgs-small.json"
    path.write_text(json.dumps({name: packages[name] for name in chosen}), encoding="utf-8")
    return path


LICENSE_FIELDS = (
    "spdx_id",
    "short_name",
    "full_name",
    "url",
    "free",
    "redistributable",
    "deprecated",
)


def license_row(**given: object) -> dict[str, object]:
    """One item of the main dataset's licenses column: ``given`` fields, the rest null."""
    unknown = set(given) - set(LICENSE_FIELDS)
    assert not unknown, f"not license fields: {sorted(unknown)}"
    return {name: given.get(name) for name in LICENSE_FIELDS}


# nixpkgs' lib.licenses.mit, as the main dataset's licenses column holds it.
MIT_LICENSE_ROW = {
    "spdx_id": "MIT",
    "short_name": "mit",
    "full_name": "MIT License",
    "url": "https://spdx.org/licenses/MIT.html",
    "free": True,
    "redistributable": True,
    "deprecated": False,
}
_META_NAMES = {"spdx_id": "spdxId", "short_name": "shortName", "full_name": "fullName"}
# The same license as nix writes it in meta.license.
MIT_LICENSE_META = {_META_NAMES.get(key, key): value for key, value in MIT_LICENSE_ROW.items()}


def local_model_provenance(source: str) -> DatasetProvenance:
    """What a main dataset built from the listing file ``source`` with the local model
    (MiniLM, 384 dimensions) records about itself."""
    return DatasetProvenance(
        source=source,
        source_kind="file",
        embedding_model=LOCAL_MODEL_ID,
        embedding_dimensions=LOCAL_MODEL_DIMENSIONS,
        embedding_backend="local",
    )
