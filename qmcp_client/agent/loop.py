"""The agent's loop: ask the model, run the tool calls it asks for (in parallel), feed the
results back, until it answers without tools or the step limit is reached."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from qmcp_client.agent.console import Console
from qmcp_client.agent.llm import ChatModel, LLMError, ToolCall
from qmcp_client.agent.servers import ToolBox, ToolOutcome
from qmcp_client.agent.settings import DEFAULT_MAX_STEPS

SYSTEM_PROMPT = (
    "You are an assistant that works through the tools you are given. Look facts up with "
    "the tools before you act, and never invent results. Some calls wait for a person's "
    "approval; if one is rejected, tell the user why (the tool's error says) and do not "
    "retry it unchanged. Answer briefly once the task is done."
)


class StepLimitReached(Exception):
    """The model was still calling tools after ``max_steps`` requests."""


class Agent:
    """A conversation with a model that may call the tools of a :class:`ToolBox`.

    ``messages`` is the history, kept across :meth:`ask` calls (an interactive chat). A
    turn that fails (:class:`LLMError`) is taken back out of the history, so the next
    question starts from the last complete turn.
    """

    def __init__(
        self,
        model: ChatModel,
        tools: ToolBox,
        console: Console,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        self.model = model
        self.tools = tools
        self.console = console
        self.max_steps = max_steps
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]

    async def ask(self, query: str) -> str:
        """The model's final answer to ``query``; raises :class:`LLMError` or
        :class:`StepLimitReached`."""
        kept = len(self.messages)
        self.messages.append({"role": "user", "content": query})
        try:
            for _ in range(self.max_steps):
                reply = await self.model.complete(self.messages, self.tools.functions)
                if not self.model.settings.stream:
                    self.console.answer(reply.content)
                self.console.end_text()
                self.messages.append(reply.as_message())
                if not reply.tool_calls:
                    return reply.content
                results = await asyncio.gather(*(self._run(call) for call in reply.tool_calls))
                self.messages.extend(results)
        except (LLMError, asyncio.CancelledError, KeyboardInterrupt):
            del self.messages[kept:]
            raise
        raise StepLimitReached(
            f"Stopped after {self.max_steps} requests to the model without a final answer "
            "(--max-steps)."
        )

    async def _run(self, call: ToolCall) -> dict[str, Any]:
        """Runs one tool call; returns the tool message for the history."""
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            arguments, outcome = (
                call.arguments,
                ToolOutcome(
                    f"The arguments are not valid JSON ({exc}); send a JSON object.", is_error=True
                ),
            )
        else:
            outcome = None
            if not isinstance(arguments, dict):
                outcome = ToolOutcome("The arguments must be a JSON object.", is_error=True)
        self.console.tool_call(call.name, arguments)
        if outcome is None:
            outcome = await self.tools.call(call.name, arguments, self._progress(call, arguments))
        self.console.tool_result(call.name, outcome)
        text = outcome.text or "(no content)"
        return {
            "role": "tool",
            "tool_call_id": call.id,
            "content": f"Error: {text}" if outcome.is_error else text,
        }

    def _progress(self, call: ToolCall, arguments: dict[str, Any]):
        """The progress callback of one call: a wait for approval is shown once, with the
        request's link when the server is QMCP, then the server's progress messages."""
        waiting = False

        async def progress(value: float, total: float | None, message: str | None) -> None:
            nonlocal waiting
            if not waiting and message and "approval" in message.lower():
                waiting = True
                link = await self.tools.approval_link(call.name, arguments)
                self.console.waiting(call.name, link)
            self.console.progress(call.id, call.name, value, total, message)

        return progress
