"""The jobs of SPEC "Phases and jobs", selected from the asset graph."""

from dagster import AssetSelection, define_asset_job

METADATA_ASSETS = AssetSelection.assets("nixpkgs_packages")

metadata_job = define_asset_job(
    "metadata_job",
    selection=METADATA_ASSETS,
    description="nixpkgs metadata -> main dataset (PROCESSING_MODE=metadata).",
)

full_job = define_asset_job(
    "full_job",
    selection=AssetSelection.groups("fdnix"),
    description="Every phase in order (PROCESSING_MODE=both or full).",
)
