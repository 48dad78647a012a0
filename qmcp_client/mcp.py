"""An MCP client over Streamable HTTP, written on httpx (no MCP SDK).

:class:`MCPClient` (asyncio) speaks MCP 2025-11-25 / 2025-06-18 / 2025-03-26 to QMCP or any
Streamable HTTP server: it negotiates the version, keeps the ``Mcp-Session-Id`` and sends
``MCP-Protocol-Version``; reads JSON or SSE answers (SSE incrementally, line by line),
hands progress and log notifications to callbacks, answers the server's own requests
(``sampling/createMessage``, ``elicitation/create``, ``roots/list``, ``ping``) through
handlers, resumes a stream that ended early with ``GET`` + ``Last-Event-ID``, keeps the
session's standalone ``GET`` stream open when asked (``get_stream=True``), and deletes its
session on close. :class:`SyncMCPClient` wraps it for synchronous code.

>>> async with MCPClient("http://127.0.0.1:8000/mcp", token) as mcp:
...     tools = await mcp.list_tools()
...     result = await mcp.call_tool("echo", {"message": "hi"})
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from qmcp_client.errors import MCPError

__all__ = [
    "LATEST_PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "CallToolResult",
    "MCPClient",
    "SessionNotFound",
    "SyncMCPClient",
    "tools_to_openai",
]

logger = logging.getLogger(__name__)

LATEST_PROTOCOL_VERSION = "2025-11-25"
SUPPORTED_PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
CLIENT_INFO = {"name": "qmcp-client", "title": "QMCP Python client", "version": "0.1.0"}
DEFAULT_RETRY_MS = 1000

METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603

Handler = Callable[[dict[str, Any]], Any]  # may return a value or an awaitable
ProgressCallback = Callable[[float, float | None, str | None], Any]


class SessionNotFound(MCPError):
    """404 for a request carrying a session id: the session ended or expired."""


class CallToolResult(BaseModel):
    """The result of ``tools/call``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    content: list[dict[str, Any]] = Field(default_factory=list)
    is_error: bool = Field(default=False, alias="isError")
    structured_content: Any = Field(default=None, alias="structuredContent")

    @property
    def text(self) -> str:
        """The text blocks of ``content``, joined by newlines."""
        return "\n".join(c.get("text", "") for c in self.content if c.get("type") == "text")


@dataclass
class _SSEEvent:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)
    retry: int | None = None


async def _sse_events(lines: Any):
    """Parses an SSE body from an async iterator of lines, yielding events as they end."""
    event = _SSEEvent()
    dirty = False
    async for line in lines:
        if line == "":
            if dirty:
                yield event
            event, dirty = _SSEEvent(), False
            continue
        if line.startswith(":"):
            continue  # a comment (keepalive)
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        dirty = True
        if name == "data":
            event.data.append(value)
        elif name == "id":
            if "\0" not in value:
                event.id = value
        elif name == "event":
            event.event = value or "message"
        elif name == "retry":
            if value.isdigit():
                event.retry = int(value)
    if dirty:
        yield event


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class MCPClient:
    """An asyncio MCP client for Streamable HTTP. Use ``async with`` (or :meth:`connect`
    and :meth:`close`).

    Callbacks and handlers may be plain functions or coroutines:

    - ``logging_callback(params)`` for ``notifications/message`` (``level``, ``data``...);
    - ``notification_handler(message)`` for any other notification;
    - ``sampling_handler(params) -> result`` for ``sampling/createMessage``;
    - ``elicitation_handler(params) -> result`` for ``elicitation/create``;
    - ``roots_handler(params) -> result`` for ``roots/list``.

    Offering a handler declares the matching client capability at initialize.

    With ``get_stream=True``, :meth:`connect` also opens the session's standalone ``GET``
    stream, where the server sends what belongs to no request (resource updates, list
    changes, its own requests); it is reopened after ``Last-Event-ID`` when it ends, and
    ``get_stream_status`` tells how the server answered it (405: it offers none).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        stream_timeout: float = 300.0,
        protocol_version: str = LATEST_PROTOCOL_VERSION,
        client_info: dict[str, Any] | None = None,
        logging_callback: Handler | None = None,
        notification_handler: Handler | None = None,
        sampling_handler: Handler | None = None,
        elicitation_handler: Handler | None = None,
        roots_handler: Handler | None = None,
        max_resumes: int = 10,
        get_stream: bool = False,
        http_client: httpx.AsyncClient | None = None,
    ):
        self.url = url
        self.headers = {**(headers or {})}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.offered_version = protocol_version
        self.client_info = client_info or CLIENT_INFO
        self.logging_callback = logging_callback
        self.notification_handler = notification_handler
        self.sampling_handler = sampling_handler
        self.elicitation_handler = elicitation_handler
        self.roots_handler = roots_handler
        self.max_resumes = max_resumes
        self._owns_http = http_client is None
        self.http = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, read=stream_timeout)
        )
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.server_info: dict[str, Any] = {}
        self.server_capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self.last_event_id: str | None = None
        self.retry_ms = DEFAULT_RETRY_MS
        self.resumptions: list[str] = []  # Last-Event-ID of every resume, for the curious
        self._ids = itertools.count(1)
        self._progress: dict[Any, ProgressCallback] = {}
        self._closed = False
        self.get_stream = get_stream
        self.get_stream_status: int | None = None
        self._get_stream_task: asyncio.Task | None = None
        self._get_stream_open = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> MCPClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        """``initialize`` (negotiating the version), then ``notifications/initialized``."""
        capabilities: dict[str, Any] = {}
        if self.sampling_handler is not None:
            capabilities["sampling"] = {}
        if self.elicitation_handler is not None:
            capabilities["elicitation"] = {"form": {}}
        if self.roots_handler is not None:
            capabilities["roots"] = {"listChanged": False}
        result = await self.request(
            "initialize",
            {
                "protocolVersion": self.offered_version,
                "capabilities": capabilities,
                "clientInfo": self.client_info,
            },
        )
        version = result.get("protocolVersion")
        if version not in SUPPORTED_PROTOCOL_VERSIONS:
            await self.close()
            raise MCPError(
                f"The server speaks MCP {version!r}; this client supports "
                f"{', '.join(SUPPORTED_PROTOCOL_VERSIONS)}.",
                code="unsupported_protocol_version",
            )
        self.protocol_version = version
        self.server_info = result.get("serverInfo") or {}
        self.server_capabilities = result.get("capabilities") or {}
        self.instructions = result.get("instructions")
        await self.notify("notifications/initialized")
        if self.get_stream and self.session_id:
            self._get_stream_task = asyncio.create_task(self._listen(), name="mcp-get-stream")
            await self._get_stream_open.wait()
        return result

    initialize = connect

    async def close(self) -> None:
        """Ends the session (``DELETE``; a 405 means the server does not allow it)."""
        if self._closed:
            return
        self._closed = True
        if self._get_stream_task is not None:
            self._get_stream_task.cancel()
            await asyncio.gather(self._get_stream_task, return_exceptions=True)
        try:
            if self.session_id:
                try:
                    await self.http.delete(self.url, headers=self._headers())
                except httpx.HTTPError as exc:
                    logger.debug("DELETE of MCP session failed: %r", exc)
        finally:
            if self._owns_http:
                await self.http.aclose()

    # -- MCP methods --------------------------------------------------------------------

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool (following ``nextCursor``), as the server describes them."""
        tools: list[dict[str, Any]] = []
        cursor = None
        while True:
            result = await self.request("tools/list", {"cursor": cursor} if cursor else {})
            tools.extend(result.get("tools") or [])
            cursor = result.get("nextCursor")
            if not cursor:
                return tools

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> CallToolResult:
        """Calls a tool; ``progress(progress, total, message)`` gets its progress reports."""
        result = await self.request(
            "tools/call", {"name": name, "arguments": arguments or {}}, progress=progress
        )
        return CallToolResult.model_validate(result)

    async def ping(self) -> dict[str, Any]:
        return await self.request("ping")

    async def set_logging_level(self, level: str) -> dict[str, Any]:
        return await self.request("logging/setLevel", {"level": level})

    async def list_resources(self) -> list[dict[str, Any]]:
        return await self._paginate("resources/list", "resources")

    async def read_resource(self, uri: str) -> dict[str, Any]:
        return await self.request("resources/read", {"uri": uri})

    async def subscribe(self, uri: str) -> dict[str, Any]:
        """``resources/subscribe``: the server tells of changes on the ``GET`` stream."""
        return await self.request("resources/subscribe", {"uri": uri})

    async def unsubscribe(self, uri: str) -> dict[str, Any]:
        return await self.request("resources/unsubscribe", {"uri": uri})

    async def list_prompts(self) -> list[dict[str, Any]]:
        return await self._paginate("prompts/list", "prompts")

    async def get_prompt(self, name: str, arguments: dict[str, str] | None = None) -> dict:
        return await self.request("prompts/get", {"name": name, "arguments": arguments or {}})

    async def _paginate(self, method: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            result = await self.request(method, {"cursor": cursor} if cursor else {})
            items.extend(result.get(key) or [])
            cursor = result.get("nextCursor")
            if not cursor:
                return items

    # -- JSON-RPC -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Sends a JSON-RPC request and returns its result; :class:`MCPError` on an error."""
        rpc_id = next(self._ids)
        params = dict(params or {})
        if progress is not None:
            token = f"qmcp-client-{rpc_id}"
            params["_meta"] = {**params.get("_meta", {}), "progressToken": token}
            self._progress[token] = progress
        message = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
        if params:
            message["params"] = params
        try:
            response = await self._exchange(message, rpc_id)
        finally:
            if progress is not None:
                self._progress.pop(f"qmcp-client-{rpc_id}", None)
        if "error" in response:
            error = response["error"] or {}
            raise MCPError(
                str(error.get("message") or "JSON-RPC error"),
                rpc_code=error.get("code"),
                data=error.get("data"),
            )
        return response.get("result") or {}

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            message["params"] = params
        await self._post_plain(message)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {**self.headers}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return {**headers, **(extra or {})}

    def _post_headers(self) -> dict[str, str]:
        return self._headers(
            {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        )

    async def _post_plain(self, message: dict[str, Any]) -> None:
        """POSTs a notification or a response: the server answers 202 with no body."""
        response = await self.http.post(
            self.url, content=json.dumps(message), headers=self._post_headers()
        )
        if response.status_code >= 400:
            raise self._http_error(response.status_code, response.content)

    def _http_error(self, status: int, body: bytes) -> MCPError:
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message, rpc_code = str(error.get("message") or ""), error.get("code")
        else:
            message, rpc_code = body.decode(errors="replace").strip()[:500], None
        message = message or f"HTTP {status}"
        cls = SessionNotFound if status == 404 and self.session_id else MCPError
        return cls(message, rpc_code=rpc_code, status=status)

    async def _exchange(self, message: dict[str, Any], rpc_id: Any) -> dict[str, Any]:
        """POSTs a request and reads its response from JSON, or from SSE (resuming it)."""
        state = {"last_event_id": None}
        async with self.http.stream(
            "POST", self.url, content=json.dumps(message), headers=self._post_headers()
        ) as response:
            if response.status_code >= 400:
                raise self._http_error(response.status_code, await response.aread())
            session_id = response.headers.get("mcp-session-id")
            if session_id and message.get("method") == "initialize":
                self.session_id = session_id
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
            if content_type == "text/event-stream":
                found = await self._read_stream(response, rpc_id, state)
            elif content_type == "application/json":
                body = json.loads(await response.aread())
                found = await self._handle_json(body, rpc_id)
                if found is None:
                    raise MCPError(f"The server's JSON answer holds no response to {rpc_id!r}.")
                return found
            else:
                raise MCPError(
                    f"Unexpected answer {response.status_code} ({content_type or 'no type'}).",
                    status=response.status_code,
                )
        resumes = 0
        while found is None:
            # The stream ended before the response: resume it after its last event.
            if state["last_event_id"] is None:
                raise MCPError(f"The stream ended without a response to {rpc_id!r}.")
            if resumes >= self.max_resumes:
                raise MCPError(f"Gave up resuming the stream of {rpc_id!r}.")
            resumes += 1
            await asyncio.sleep(self.retry_ms / 1000)
            found = await self._resume(state, rpc_id)
        return found

    async def _resume(self, state: dict[str, Any], rpc_id: Any) -> dict[str, Any] | None:
        last = state["last_event_id"]
        self.resumptions.append(last)
        headers = self._headers({"Accept": "text/event-stream", "Last-Event-ID": last})
        async with self.http.stream("GET", self.url, headers=headers) as response:
            if response.status_code >= 400:
                raise self._http_error(response.status_code, await response.aread())
            return await self._read_stream(response, rpc_id, state)

    async def _listen(self) -> None:
        """Keeps the standalone ``GET`` stream open until :meth:`close`.

        Its messages go to the handlers as a POST stream's do. When it ends (the server
        closes it now and then) it is reopened after its last event id; it stops for good
        on an error answer (405 when the server offers none, 404 when the session ended).
        """
        state: dict[str, Any] = {"last_event_id": None}
        try:
            while not self._closed:
                extra = {"Accept": "text/event-stream"}
                if state["last_event_id"]:
                    extra["Last-Event-ID"] = state["last_event_id"]
                try:
                    async with self.http.stream(
                        "GET", self.url, headers=self._headers(extra)
                    ) as response:
                        self.get_stream_status = response.status_code
                        self._get_stream_open.set()
                        if response.status_code >= 400:
                            logger.debug("no GET stream: HTTP %s", response.status_code)
                            return
                        await self._read_stream(response, None, state)
                except httpx.HTTPError as exc:
                    logger.debug("the GET stream broke: %r", exc)
                await asyncio.sleep(self.retry_ms / 1000)
        finally:
            self._get_stream_open.set()

    async def _read_stream(
        self, response: httpx.Response, rpc_id: Any, state: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Reads SSE events as they arrive until the response to ``rpc_id`` (or the end)."""
        async for event in _sse_events(response.aiter_lines()):
            if event.retry is not None:
                self.retry_ms = event.retry
            if event.id is not None:
                state["last_event_id"] = self.last_event_id = event.id
            data = "\n".join(event.data).strip()
            if event.event != "message" or not data:
                continue  # a priming event or a comment-like one
            try:
                payload = json.loads(data)
            except ValueError:
                logger.warning("ignoring an SSE event that is not JSON: %r", data[:200])
                continue
            found = await self._handle_json(payload, rpc_id)
            if found is not None:
                return found
        return None

    async def _handle_json(self, payload: Any, rpc_id: Any) -> dict[str, Any] | None:
        """Dispatches server messages; returns the response to ``rpc_id`` if among them."""
        found = None
        for message in payload if isinstance(payload, list) else [payload]:
            if not isinstance(message, dict):
                continue
            if "method" in message and "id" in message:
                await self._answer(message)
            elif "method" in message:
                await self._on_notification(message)
            elif (
                rpc_id is not None
                and message.get("id") == rpc_id
                and ("result" in message or "error" in message)
            ):
                found = message
            else:
                logger.debug("ignoring an unexpected message: %r", message)
        return found

    async def _on_notification(self, message: dict[str, Any]) -> None:
        method, params = message["method"], message.get("params") or {}
        try:
            if method == "notifications/progress":
                callback = self._progress.get(params.get("progressToken"))
                if callback is not None:
                    await _maybe_await(
                        callback(params.get("progress"), params.get("total"), params.get("message"))
                    )
                    return
            elif method == "notifications/message" and self.logging_callback is not None:
                await _maybe_await(self.logging_callback(params))
                return
            if self.notification_handler is not None:
                await _maybe_await(self.notification_handler(message))
        except Exception:
            logger.exception("an MCP notification callback failed")

    async def _answer(self, message: dict[str, Any]) -> None:
        """Answers a server-to-client request by POSTing the JSON-RPC response."""
        method, params = message["method"], message.get("params") or {}
        handler = {
            "sampling/createMessage": self.sampling_handler,
            "elicitation/create": self.elicitation_handler,
            "roots/list": self.roots_handler,
        }.get(method)
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "ping":
            reply["result"] = {}
        elif handler is None:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": f"Not supported: {method}"}
        else:
            try:
                result = await _maybe_await(handler(params))
                if isinstance(result, BaseModel):
                    result = result.model_dump(mode="json", by_alias=True, exclude_none=True)
                reply["result"] = result if result is not None else {}
            except MCPError as exc:
                reply["error"] = {"code": exc.rpc_code or INTERNAL_ERROR, "message": exc.message}
            except Exception as exc:
                logger.exception("the handler for %s failed", method)
                reply["error"] = {"code": INTERNAL_ERROR, "message": str(exc) or repr(exc)}
        await self._post_plain(reply)


def _field(tool: Any, *names: str) -> Any:
    for name in names:
        if isinstance(tool, dict):
            if name in tool:
                return tool[name]
        elif hasattr(tool, name):
            return getattr(tool, name)
    return None


def tools_to_openai(tools: Iterable[Any]) -> list[dict[str, Any]]:
    """MCP tools (dicts from :meth:`MCPClient.list_tools`, REST :class:`Tool` models or SDK
    ``Tool`` objects) in OpenAI's function-calling format."""
    out = []
    for tool in tools:
        schema = _field(tool, "inputSchema", "input_schema") or {}
        if isinstance(schema, BaseModel):
            schema = schema.model_dump(mode="json", by_alias=True, exclude_none=True)
        schema = dict(schema) or {"type": "object", "properties": {}}
        schema.setdefault("type", "object")
        if schema["type"] == "object":
            schema.setdefault("properties", {})
        description = _field(tool, "description") or _field(tool, "title") or ""
        out.append(
            {
                "type": "function",
                "function": {
                    "name": _field(tool, "name"),
                    "description": description,
                    "parameters": schema,
                },
            }
        )
    return out


class SyncMCPClient:
    """A synchronous :class:`MCPClient`: the async client runs on its own event loop in a
    background thread. Callbacks and handlers run on that thread.

    >>> with SyncMCPClient("http://127.0.0.1:8000/mcp", token) as mcp:
    ...     print(mcp.call_tool("echo", {"message": "hi"}).text)
    """

    def __init__(self, url: str, token: str | None = None, **kwargs: Any):
        self._url, self._token, self._kwargs = url, token, kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="qmcp-mcp-client", daemon=True
        )
        self._thread.start()
        self._client: MCPClient = self._run(self._make())

    async def _make(self) -> MCPClient:
        # The httpx.AsyncClient must be created on the loop that uses it.
        return MCPClient(self._url, self._token, **self._kwargs)

    def _run(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> SyncMCPClient:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # session_id, protocol_version, server_info... read through to the async client.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._client, name)

    def connect(self) -> dict[str, Any]:
        return self._run(self._client.connect())

    initialize = connect

    def list_tools(self) -> list[dict[str, Any]]:
        return self._run(self._client.list_tools())

    def call_tool(self, name: str, arguments=None, *, progress=None) -> CallToolResult:
        return self._run(self._client.call_tool(name, arguments, progress=progress))

    def ping(self) -> dict[str, Any]:
        return self._run(self._client.ping())

    def set_logging_level(self, level: str) -> dict[str, Any]:
        return self._run(self._client.set_logging_level(level))

    def request(self, method: str, params=None, *, progress=None) -> dict[str, Any]:
        return self._run(self._client.request(method, params, progress=progress))

    def notify(self, method: str, params=None) -> None:
        return self._run(self._client.notify(method, params))

    def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
