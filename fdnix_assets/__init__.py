"""fdnix indexer: nixpkgs metadata to search-ready LanceDB datasets, as Dagster assets.

``defs`` is imported lazily, so the search code shipped in the Lambda layer (and the
``fdnix search`` command) can import this package without loading Dagster.
``dagster job execute -m fdnix_assets`` still finds it: Dagster looks through ``dir()``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from fdnix_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'fdnix_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
