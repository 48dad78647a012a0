"""What the agent shows as it works: the model's streamed text, each tool call and its result
as they happen, waits for approval with the request's link and the server's progress, the
servers' log messages, and retries of the LLM API."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from qmcp_client.agent.servers import ToolOutcome

RESULT_PREVIEW = 400
# Progress of a long wait is shown when its message changes, and every this many units.
PROGRESS_EVERY = 10


def _one_line(text: str, limit: int = RESULT_PREVIEW) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Console:
    """Writes the transcript to ``out`` and notices (retries) to ``err``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._in_text = False
        self._progress: dict[str, tuple[str | None, float]] = {}

    def _line(self, text: str, stream: TextIO | None = None) -> None:
        self.end_text()
        stream = stream or self.out
        stream.write(text + "\n")
        stream.flush()

    def text(self, delta: str) -> None:
        """A piece of the model's answer, written as it streams in."""
        if not self._in_text:
            self.out.write("assistant> ")
            self._in_text = True
        self.out.write(delta)
        self.out.flush()

    def end_text(self) -> None:
        if self._in_text:
            self.out.write("\n")
            self.out.flush()
            self._in_text = False

    def answer(self, content: str) -> None:
        """A whole answer that was not streamed."""
        if content:
            self.text(content)
        self.end_text()

    def tool_call(self, name: str, arguments: Any) -> None:
        if not isinstance(arguments, str):  # not JSON: shown as the model sent it
            arguments = json.dumps(arguments, ensure_ascii=False)
        self._line(f"→ {name} {arguments}")

    def tool_result(self, name: str, outcome: ToolOutcome) -> None:
        mark = " (error)" if outcome.is_error else ""
        self._line(f"← {name}{mark}: {_one_line(outcome.text) or '(no content)'}")

    def waiting(self, name: str, link: str | None) -> None:
        where = f": {link}" if link else ""
        self._line(f"… {name} is waiting for approval{where}")

    def progress(
        self, key: str, name: str, value: float, total: float | None, message: str | None
    ) -> None:
        """A call's progress (``key`` tells parallel calls apart), shown when its message
        changes and every ``PROGRESS_EVERY`` units."""
        last_message, last_value = self._progress.get(key, (None, float("-inf")))
        if message == last_message and value - last_value < PROGRESS_EVERY:
            return
        self._progress[key] = (message, value)
        of = f"/{total:g}" if total else ""
        self._line(f"… {name}: {message or 'progress'} ({value:g}{of})")

    def log(self, server: str, params: dict[str, Any]) -> None:
        data = params.get("data")
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        level = params.get("level", "info")
        self._line(f"[{server} {level}] {_one_line(text)}")

    def retry(self, reason: str, delay: float, retry: int, retries: int) -> None:
        self._line(
            f"LLM API: {reason}; retry {retry} of {retries} in {delay:.1f} s", stream=self.err
        )

    def notice(self, text: str) -> None:
        self._line(text, stream=self.err)
