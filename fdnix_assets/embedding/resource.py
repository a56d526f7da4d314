"""The embedding backend as a Dagster resource, chosen by EMBEDDING_BACKEND."""

from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field

from fdnix_assets.embedding.bedrock import BedrockBatchEmbedder, ModelInput
from fdnix_assets.embedding.local import LocalEmbedder
from fdnix_assets.embedding.vector_index import VectorIndexPlan, plan_vector_index
from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID

# Bedrock throttles generously; standard mode backs off and retries throttling errors.
RETRIES = Config(retries={"mode": "standard", "max_attempts": 8})


class EmbeddingBackend(ConfigurableResource):
    """Which model gives packages their vectors; its id and dimension key the content hash.

    ``local`` runs all-MiniLM-L6-v2 in-process. ``bedrock`` runs Amazon Titan Text
    Embeddings through Bedrock batch inference (on demand for fewer than 100 texts); boto3
    finds its endpoints itself (``AWS_ENDPOINT_URL_BEDROCK``,
    ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``, ``AWS_ENDPOINT_URL_S3``).
    """

    backend: str = Field(default="local", description="EMBEDDING_BACKEND: local or bedrock.")
    bedrock_model_id: str = Field(default="amazon.titan-embed-text-v2:0")
    bedrock_output_dimensions: int = Field(default=256)
    bedrock_role_arn: str | None = Field(default=None)
    bedrock_input_bucket: str | None = Field(default=None)
    bedrock_output_bucket: str | None = Field(
        default=None, description="BEDROCK_OUTPUT_BUCKET; the input bucket when unset."
    )
    bedrock_batch_size: int = Field(default=10_000)
    bedrock_poll_interval: float = Field(default=60, description="Seconds between status polls.")
    bedrock_max_wait_time: float = Field(
        default=7_200, description="Seconds to wait for batch jobs before stopping them."
    )
    bedrock_key_prefix: str = Field(
        default="fdnix-bedrock", description="Key prefix of job inputs and outputs in S3."
    )
    region: str = Field(default="us-east-1")

    @property
    def model_id(self) -> str:
        return LOCAL_MODEL_ID if self.backend == "local" else self.bedrock_model_id

    @property
    def dimensions(self) -> int:
        return LOCAL_MODEL_DIMENSIONS if self.backend == "local" else self.bedrock_output_dimensions

    @property
    def is_bedrock(self) -> bool:
        return self.backend == "bedrock"

    def local_embedder(self) -> LocalEmbedder:
        """MiniLM on this machine's cores (torch loads on the first text, not before)."""
        return LocalEmbedder()

    def bedrock_client(self) -> Any:
        """The Bedrock control-plane client (jobs); made on use, never at import."""
        return boto3.client("bedrock", region_name=self.region, config=RETRIES)

    def bedrock_embedder(self, log: Callable[[str], None]) -> BedrockBatchEmbedder:
        """The batch embedder; fails with the variable's name when a required one is unset."""
        if not self.bedrock_role_arn:
            raise ValueError("EMBEDDING_BACKEND=bedrock needs BEDROCK_ROLE_ARN (the job's role)")
        if not self.bedrock_input_bucket:
            raise ValueError(
                "EMBEDDING_BACKEND=bedrock needs BEDROCK_INPUT_BUCKET (where job input goes)"
            )
        return BedrockBatchEmbedder(
            model=ModelInput(self.bedrock_model_id, self.bedrock_output_dimensions),
            role_arn=self.bedrock_role_arn,
            input_bucket=self.bedrock_input_bucket,
            output_bucket=self.bedrock_output_bucket or self.bedrock_input_bucket,
            bedrock=self.bedrock_client(),
            runtime=boto3.client("bedrock-runtime", region_name=self.region, config=RETRIES),
            s3=boto3.client("s3", region_name=self.region, config=RETRIES),
            batch_size=self.bedrock_batch_size,
            poll_interval=self.bedrock_poll_interval,
            max_wait=self.bedrock_max_wait_time,
            key_prefix=self.bedrock_key_prefix,
            log=log,
        )


class VectorIndexSettings(ConfigurableResource):
    """VECTOR_INDEX_PARTITIONS / VECTOR_INDEX_SUB_VECTORS; None picks them from the table size.

    See :mod:`fdnix_assets.embedding.vector_index` for how the automatic values were chosen.
    """

    partitions: int | None = Field(
        default=None, description="IVF partitions (VECTOR_INDEX_PARTITIONS); 0 builds no index."
    )
    sub_vectors: int | None = Field(
        default=None, description="PQ sub-vectors (VECTOR_INDEX_SUB_VECTORS)."
    )

    def plan(self, vector_rows: int, dimensions: int) -> VectorIndexPlan | None:
        return plan_vector_index(vector_rows, dimensions, self.partitions, self.sub_vectors)
