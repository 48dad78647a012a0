"""The agent's settings, importable without the ``agent`` extra (``--help`` needs them)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MAX_STEPS = 10


@dataclass
class LLMSettings:
    """Where the model is and how to ask it. ``base_url=None`` means OpenAI's own API."""

    model: str = DEFAULT_MODEL
    base_url: str | None = None
    api_key: str | None = None
    stream: bool = True
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    @property
    def where(self) -> str:
        return self.base_url or "the OpenAI API"
