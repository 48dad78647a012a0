"""A scripted OpenAI-compatible chat-completions server for the agent's tests (no network).

A test gives it a *brain*: a function of the request body that returns the next turn,
:func:`say` (a final answer) or :func:`call` (tool calls), as a real model would decide from
the conversation so far. It answers ``POST /v1/chat/completions`` as JSON or, when the
request asks to stream, as SSE chunks (content in pieces, tool calls in deltas), checks the
bearer key and the model, and can be told to fail first (``fail_first``: a status and
headers, or ``"stall"`` to answer too late). Every request body is kept in ``requests``.
"""

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY = "sk-test-key"
MODEL = "scripted-model"
STALL_SECONDS = 3.0

Brain = Callable[[dict[str, Any]], dict[str, Any]]


def say(text: str) -> dict[str, Any]:
    return {"content": text, "tool_calls": []}


def call(*calls: tuple[str, dict[str, Any]], content: str = "") -> dict[str, Any]:
    """Tool calls: ``call(("search_users", {"query": "Dobkin"}), ...)``."""
    return {
        "content": content,
        "tool_calls": [
            {"id": f"call_{uuid.uuid4().hex[:8]}", "name": name, "arguments": json.dumps(args)}
            for name, args in calls
        ],
    }


def last_tool_results(body: dict[str, Any]) -> dict[str, str]:
    """The tool messages after the last assistant turn, by the name of the tool called."""
    messages = body["messages"]
    names = {}
    for message in messages:
        for tool_call in message.get("tool_calls") or []:
            names[tool_call["id"]] = tool_call["function"]["name"]
    results = {}
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        results[names[message["tool_call_id"]]] = message["content"]
    return results


class ScriptedLLM:
    def __init__(self, brain: Brain):
        self.brain = brain
        self.requests: list[dict[str, Any]] = []
        self.fail_first: list[Any] = []  # (status, headers) or "stall", used in order
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                llm.requests.append(body)
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._error(401, "Incorrect API key provided.", "invalid_api_key")
                if body.get("model") != MODEL:
                    message = f"The model `{body.get('model')}` does not exist."
                    return self._error(404, message, "model_not_found")
                if llm.fail_first:
                    failure = llm.fail_first.pop(0)
                    if failure == "stall":
                        time.sleep(STALL_SECONDS)
                        return None
                    status, headers = failure
                    return self._error(status, f"Scripted failure {status}.", "scripted", headers)
                turn = llm.brain(body)
                if body.get("stream"):
                    return self._stream(turn)
                return self._json(200, completion(turn))

            def _json(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status, message, code, headers=None):
                error = {"message": message, "type": "invalid_request_error", "code": code}
                self._json(status, {"error": error}, headers)

            def _stream(self, turn):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in chunks(turn):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a stalled answer finds its client gone

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def env(self) -> dict[str, str]:
        """The agent's environment for this server."""
        return {"QMCP_LLM_BASE_URL": self.url, "OPENAI_API_KEY": KEY, "QMCP_LLM_MODEL": MODEL}


def _tool_calls(turn):
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in turn["tool_calls"]
    ]


def completion(turn: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn["content"] or None}
    if turn["tool_calls"]:
        message["tool_calls"] = _tool_calls(turn)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if turn["tool_calls"] else "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def chunks(turn: dict[str, Any]):
    """The streamed form of a turn: role, content in pieces, each tool call in deltas."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
    }

    def chunk(delta, finish=None):
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    text = turn["content"] or ""
    for start in range(0, len(text), 7):
        yield chunk({"content": text[start : start + 7]})
    for index, c in enumerate(turn["tool_calls"]):
        head = {"index": index, "id": c["id"], "type": "function"}
        yield chunk({"tool_calls": [{**head, "function": {"name": c["name"], "arguments": ""}}]})
        middle = len(c["arguments"]) // 2
        for piece in (c["arguments"][:middle], c["arguments"][middle:]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if turn["tool_calls"] else "stop")
