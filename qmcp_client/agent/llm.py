"""The model side of the agent: chat completions over any OpenAI-compatible API.

:class:`ChatModel` sends one request through the official ``openai`` package (OpenAI, Azure-
style gateways such as DIAL, Ollama, vLLM, LM Studio: only the base URL differs), streams the
text to a callback as it arrives, and retries what retrying can fix (429, 408, 409, 5xx,
timeouts, refused connections) with exponential backoff, honouring ``Retry-After``. The
package's own retries are silent, so they are off and each retry is reported instead. What
retrying cannot fix (a bad key, an unknown model) raises :class:`LLMError` with a sentence
for a person.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from qmcp_client.agent.settings import LLMSettings

# A server-directed delay longer than this is not waited for: the error is reported instead.
MAX_RETRY_AFTER = 60.0
RETRY_STATUS = {408, 409, 429}


class LLMError(Exception):
    """A failure of the LLM API that retrying did not fix; ``str()`` says what to do."""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Reply:
    """The model's turn: its text and the tool calls it asks for (none for a final answer)."""

    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def as_message(self) -> dict[str, Any]:
        """The assistant message to keep in the history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


TextCallback = Callable[[str], None]
RetryCallback = Callable[[str, float, int, int], None]  # reason, delay, retry, retries


class ChatModel:
    """One model behind an OpenAI-compatible API. ``on_text(delta)`` gets the streamed text;
    ``on_retry(reason, delay, retry, retries)`` hears of each retry before its pause."""

    def __init__(
        self,
        settings: LLMSettings,
        *,
        on_text: TextCallback | None = None,
        on_retry: RetryCallback | None = None,
    ):
        self.settings = settings
        self.on_text = on_text or (lambda delta: None)
        self.on_retry = on_retry or (lambda *args: None)
        self.client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            # A local server (Ollama, vLLM...) takes any key, but the package wants one.
            api_key=settings.api_key or ("unused" if settings.base_url else None),
            timeout=settings.timeout,
            max_retries=0,
        )

    async def close(self) -> None:
        await self.client.close()

    async def complete(self, messages: list[dict], tools: list[dict]) -> Reply:
        """The model's next turn for ``messages``, offering ``tools`` (OpenAI functions).

        Raises :class:`LLMError` when the API refuses the request, or still fails after the
        retries.
        """
        retry = 0
        while True:
            try:
                return await self._request(messages, tools)
            except openai.APIError as exc:
                reason, delay = self._retryable(exc, retry)
                if reason is None or retry >= self.settings.retries:
                    raise LLMError(self._explain(exc, retry)) from exc
            retry += 1
            self.on_retry(reason, delay, retry, self.settings.retries)
            await asyncio.sleep(delay)

    async def _request(self, messages: list[dict], tools: list[dict]) -> Reply:
        kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        if not self.settings.stream:
            completion = await self.client.chat.completions.create(**kwargs)
            return _reply(completion)
        async with self.client.chat.completions.stream(**kwargs) as stream:
            async for event in stream:
                if event.type == "content.delta" and event.delta:
                    self.on_text(event.delta)
            return _reply(await stream.get_final_completion())

    def _retryable(self, exc: openai.APIError, retry: int) -> tuple[str | None, float]:
        """Why ``exc`` is worth a retry and how long to wait first; (None, 0) if it is not."""
        backoff = min(self.settings.max_backoff, self.settings.backoff * 2**retry)
        delay = backoff * (0.75 + random.random() / 4)
        if isinstance(exc, openai.APITimeoutError):
            return f"no answer within {self.settings.timeout:g} s", delay
        if isinstance(exc, openai.APIConnectionError):
            return f"could not connect to {self.settings.where}", delay
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status not in RETRY_STATUS and status < 500:
                return None, 0.0
            after = _retry_after(exc.response.headers)
            if after is not None and after > MAX_RETRY_AFTER:
                return None, 0.0
            return f"HTTP {status}", delay if after is None else after
        return None, 0.0

    def _explain(self, exc: openai.APIError, retries: int) -> str:
        """A sentence about ``exc`` for the person running the agent."""
        s = self.settings
        detail = _detail(exc)
        tried = f" after {retries} {'retry' if retries == 1 else 'retries'}" if retries else ""
        if isinstance(exc, openai.AuthenticationError):
            return (
                f"The LLM API at {s.where} refused the API key (HTTP 401: {detail}). "
                "Set OPENAI_API_KEY or --api-key."
            )
        if isinstance(exc, openai.PermissionDeniedError):
            return f"The API key may not use model '{s.model}' at {s.where} (HTTP 403: {detail})."
        if isinstance(exc, openai.NotFoundError) or (
            isinstance(exc, openai.BadRequestError) and "model" in detail.lower()
        ):
            return (
                f"The LLM API at {s.where} has no model '{s.model}' "
                f"(HTTP {exc.status_code}: {detail}). Set QMCP_LLM_MODEL or --model "
                "(and check QMCP_LLM_BASE_URL)."
            )
        if isinstance(exc, openai.APITimeoutError):
            return f"The LLM API at {s.where} gave no answer within {s.timeout:g} s{tried}."
        if isinstance(exc, openai.APIConnectionError):
            return f"Could not connect to the LLM API at {s.where}{tried}: {detail}."
        if isinstance(exc, openai.APIStatusError):
            return f"The LLM API at {s.where} answered HTTP {exc.status_code}{tried}: {detail}"
        return f"The LLM API at {s.where} failed{tried}: {detail}"


def _reply(completion: Any) -> Reply:
    if not completion.choices:
        raise LLMError("The LLM API answered with no choices.")
    message = completion.choices[0].message
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "{}")
        for call in message.tool_calls or []
        if call.type == "function"
    ]
    return Reply(content=message.content or "", tool_calls=calls)


def _retry_after(headers: Any) -> float | None:
    """The server's ``retry-after-ms`` or ``retry-after`` (seconds), if it sent one."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue
    return None


def _detail(exc: openai.APIError) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    cause = exc.__cause__
    return str(cause or exc.message or exc)
