"""The embedding backend as a Dagster resource, chosen by EMBEDDING_BACKEND."""

from dagster import ConfigurableResource
from pydantic import Field

from fdnix_assets.settings import LOCAL_MODEL_DIMENSIONS, LOCAL_MODEL_ID


class EmbeddingBackend(ConfigurableResource):
    """Which model gives packages their vectors; its id and dimension key the content hash."""

    backend: str = Field(default="local", description="EMBEDDING_BACKEND: local or bedrock.")
    bedrock_model_id: str = Field(default="amazon.titan-embed-text-v2:0")
    bedrock_output_dimensions: int = Field(default=256)
    bedrock_role_arn: str | None = Field(default=None)
    bedrock_input_bucket: str | None = Field(default=None)
    bedrock_output_bucket: str | None = Field(default=None)
    bedrock_batch_size: int = Field(default=10_000)
    bedrock_poll_interval: int = Field(default=60)
    bedrock_max_wait_time: int = Field(default=7_200)
    region: str = Field(default="us-east-1")

    @property
    def model_id(self) -> str:
        return LOCAL_MODEL_ID if self.backend == "local" else self.bedrock_model_id

    @property
    def dimensions(self) -> int:
        return LOCAL_MODEL_DIMENSIONS if self.backend == "local" else self.bedrock_output_dimensions
