from pydantic import BaseModel, ConfigDict


class ToolInput(BaseModel):
    """Base for tool input models: unknown arguments are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")
