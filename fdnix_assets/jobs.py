"""The jobs of SPEC "Phases and jobs", selected from the asset graph."""

from dagster import AssetSelection, define_asset_job, in_process_executor

METADATA_ASSETS = AssetSelection.assets("nixpkgs_packages")
EMBEDDING_ASSETS = AssetSelection.assets("package_embeddings")
MINIFIED_ASSETS = AssetSelection.assets("minified_dataset")
# Submits Bedrock jobs without waiting; the sensor continues. full_job waits inline instead.
BEDROCK_SUBMISSION_ASSETS = AssetSelection.assets("bedrock_embedding_jobs")

metadata_job = define_asset_job(
    "metadata_job",
    selection=METADATA_ASSETS,
    description="nixpkgs metadata -> main dataset (PROCESSING_MODE=metadata).",
    executor_def=in_process_executor,
)

full_job = define_asset_job(
    "full_job",
    selection=AssetSelection.groups("fdnix") - BEDROCK_SUBMISSION_ASSETS,
    description="Every phase in order (PROCESSING_MODE=both or full).",
    executor_def=in_process_executor,
)

embedding_job = define_asset_job(
    "embedding_job",
    selection=EMBEDDING_ASSETS,
    description=(
        "main dataset -> embeddings + vector index (PROCESSING_MODE=embedding); waits for "
        "Bedrock inline."
    ),
)

bedrock_submit_job = define_asset_job(
    "bedrock_submit_job",
    selection=BEDROCK_SUBMISSION_ASSETS,
    description=(
        "Submits the Bedrock batch jobs for the packages without a vector and returns; "
        "bedrock_batch_sensor launches embedding_ingest_job when they end."
    ),
)

embedding_ingest_job = define_asset_job(
    "embedding_ingest_job",
    selection=EMBEDDING_ASSETS.downstream(),
    description=(
        "Launched by bedrock_batch_sensor: ingests the finished Bedrock jobs' vectors into "
        "the main dataset, then builds everything downstream (the minified dataset, ...)."
    ),
)

minified_job = define_asset_job(
    "minified_job",
    selection=MINIFIED_ASSETS,
    description=(
        "main dataset -> minified dataset with full-text and vector indexes "
        "(PROCESSING_MODE=minified)."
    ),
)
