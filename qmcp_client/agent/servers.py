"""The MCP side of the agent: connections to several Streamable HTTP servers, their tools
as one list of OpenAI functions, and the calls routed back to the server that owns them.

Two interchangeable connections speak MCP 2025-11-25 with a session: :class:`SdkConnection`
(the official SDK's ``mcp.Client``) and :class:`QmcpConnection` (this package's
hand-written :class:`~qmcp_client.mcp.MCPClient`). Both open the session's GET stream, hand
the server's log messages to ``on_log`` and each call's progress to its own callback, and
resume a call's stream after ``Last-Event-ID`` (a gated call's stream may close while it
waits for a reviewer).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from qmcp_client.errors import QMCPError
from qmcp_client.mcp import MCPClient, tools_to_openai
from qmcp_client.rest import AsyncQMCPClient

LogCallback = Callable[[str, dict[str, Any]], Any]  # server name, the log's params
ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]

# OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$.
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")
PREFIX_SEPARATOR = "__"
# How long a call's stream may stay silent (a gated call sends progress every second).
STREAM_READ_TIMEOUT = 300.0


@dataclass
class ServerSpec:
    """An MCP server to connect to. QMCP also gives its REST URL and token (``rest_url``,
    ``token``), with which the agent links a gated call to its approval request."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    rest_url: str | None = None
    token: str | None = None

    @classmethod
    def qmcp(cls, url: str, token: str, name: str = "qmcp") -> ServerSpec:
        base = url.rstrip("/")
        return cls(
            name=name,
            url=f"{base}/mcp",
            headers={"Authorization": f"Bearer {token}"},
            rest_url=base,
            token=token,
        )


@dataclass
class ToolOutcome:
    """What a tool call gave: its text for the model, and whether it is an error."""

    text: str
    is_error: bool = False
    structured: Any = None

    @classmethod
    def from_result(cls, content: list[dict], is_error: bool, structured: Any) -> ToolOutcome:
        text = "\n".join(c.get("text", "") for c in content if c.get("type") == "text")
        if not text and structured is not None:
            text = json.dumps(structured, ensure_ascii=False)
        return cls(text=text, is_error=is_error, structured=structured)


class Connection(Protocol):
    """An open MCP session (an async context manager)."""

    session_id: str | None

    async def list_tools(self) -> list[dict[str, Any]]: ...

    async def call_tool(
        self, name: str, arguments: dict[str, Any], progress: ProgressCallback
    ) -> ToolOutcome: ...


class QmcpConnection:
    """A session through the hand-written :class:`~qmcp_client.mcp.MCPClient`."""

    def __init__(self, spec: ServerSpec, on_log: LogCallback):
        self.client = MCPClient(
            spec.url,
            headers=spec.headers,
            stream_timeout=STREAM_READ_TIMEOUT,
            logging_callback=lambda params: on_log(spec.name, params),
            max_resumes=1000,
            get_stream=True,
        )

    @property
    def session_id(self) -> str | None:
        return self.client.session_id

    async def __aenter__(self) -> QmcpConnection:
        await self.client.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()

    async def list_tools(self) -> list[dict[str, Any]]:
        return await self.client.list_tools()

    async def call_tool(self, name, arguments, progress) -> ToolOutcome:
        result = await self.client.call_tool(name, arguments, progress=progress)
        return ToolOutcome.from_result(result.content, result.is_error, result.structured_content)


class SdkConnection:
    """A session through the official MCP SDK's ``mcp.Client`` (the initialize handshake)."""

    def __init__(self, spec: ServerSpec, on_log: LogCallback):
        self.spec = spec
        self.on_log = on_log
        self.session_id: str | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> SdkConnection:
        import httpx2
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client

        async def seen(response: httpx2.Response) -> None:
            self.session_id = response.headers.get("mcp-session-id") or self.session_id

        async def on_log(params: Any) -> None:
            self.on_log(self.spec.name, params.model_dump(mode="json", exclude_none=True))

        try:
            http = await self._stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=self.spec.headers,
                    timeout=httpx2.Timeout(30, read=STREAM_READ_TIMEOUT),
                    event_hooks={"response": [seen]},
                )
            )
            transport = streamable_http_client(self.spec.url, http_client=http)
            self.client = await self._stack.enter_async_context(
                Client(transport, mode="legacy", logging_callback=on_log)
            )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def list_tools(self) -> list[dict[str, Any]]:
        tools, cursor = [], None
        while True:
            page = await self.client.list_tools(cursor=cursor)
            tools += [
                tool.model_dump(mode="json", by_alias=True, exclude_none=True)
                for tool in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def call_tool(self, name, arguments, progress) -> ToolOutcome:
        """See :class:`Connection`. The SDK runs progress callbacks as tasks of their own,
        which may not have run when the result arrives: they are awaited, so that a call's
        progress is always shown before its result, as with the hand-written client."""
        running: set[asyncio.Task] = set()

        async def tracked(value: float, total: float | None, message: str | None) -> None:
            task = asyncio.current_task()
            running.add(task)
            try:
                await progress(value, total, message)
            finally:
                running.discard(task)

        result = await self.client.call_tool(name, arguments, progress_callback=tracked)
        await asyncio.sleep(0)  # callbacks spawned with the last notifications start
        while running:
            await asyncio.gather(*running, return_exceptions=True)
        content = [c.model_dump(mode="json", by_alias=True) for c in result.content]
        return ToolOutcome.from_result(content, result.is_error, result.structured_content)


CONNECTIONS: dict[str, type] = {"sdk": SdkConnection, "qmcp": QmcpConnection}


class ApprovalLinks:
    """Finds the approval request of a QMCP call that waits for a reviewer (REST /v1).

    QMCP's waiting message names the tool, not the request, so the request is the one of
    the caller's newest gated invocation of that tool, from this session, with these
    arguments (a reviewer may have decided already: its status is not asked for).
    """

    def __init__(self, spec: ServerSpec):
        self.base = spec.rest_url.rstrip("/")
        self.rest = AsyncQMCPClient(self.base, spec.token, retries=1, timeout=10)

    async def link(self, tool: str, arguments: dict, session_id: str | None) -> str | None:
        """The request's page (``/hitl/<id>/``), or None when it cannot be found."""
        try:
            page = await self.rest.list_invocations(tool=tool)
        except QMCPError:
            return None
        for invocation in page.items:
            args = invocation.arguments if isinstance(invocation.arguments, dict) else {}
            if session_id and invocation.mcp_session_id != session_id:
                continue
            if invocation.human_request_id and all(args.get(k) == v for k, v in arguments.items()):
                return f"{self.base}/hitl/{invocation.human_request_id}/"
        return None

    async def close(self) -> None:
        await self.rest.aclose()


@dataclass
class _Server:
    spec: ServerSpec
    connection: Connection
    approvals: ApprovalLinks | None


@dataclass
class Route:
    """Where an OpenAI function name leads: a server and the tool's own name there."""

    server: _Server
    tool: str


class ToolBox:
    """The tools of several MCP servers, offered to the model as one list of functions.

    A tool name that more than one server has is offered as ``<server>__<name>`` for each
    of them; a unique name stays as it is. Use as an async context manager.
    """

    def __init__(self, specs: list[ServerSpec], *, client: str = "sdk", on_log: LogCallback):
        if client not in CONNECTIONS:
            raise ValueError(f"unknown MCP client {client!r}: {', '.join(CONNECTIONS)}")
        self.specs = specs
        self.client = client
        self.on_log = on_log
        self.servers: list[_Server] = []
        self.routes: dict[str, Route] = {}
        self.functions: list[dict[str, Any]] = []
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> ToolBox:
        try:
            for spec in self.specs:
                try:
                    connection = await self._stack.enter_async_context(
                        CONNECTIONS[self.client](spec, self.on_log)
                    )
                except Exception as exc:
                    raise ConnectionFailed(spec, exc) from exc
                approvals = ApprovalLinks(spec) if spec.rest_url and spec.token else None
                if approvals is not None:
                    self._stack.push_async_callback(approvals.close)
                self.servers.append(_Server(spec, connection, approvals))
            await self.load()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def load(self) -> None:
        """Lists every server's tools and builds the names offered to the model."""
        listed = []
        for server in self.servers:
            try:
                tools = await server.connection.list_tools()
            except Exception as exc:
                raise ConnectionFailed(server.spec, exc) from exc
            listed.append((server, tools))
        counts: dict[str, int] = {}
        for _, tools in listed:
            for tool in tools:
                counts[tool["name"]] = counts.get(tool["name"], 0) + 1
        self.routes, self.functions = {}, []
        for server, tools in listed:
            for tool, function in zip(tools, tools_to_openai(tools), strict=True):
                name = tool["name"]
                if counts[name] > 1:
                    name = _NOT_IN_NAME.sub("_", f"{server.spec.name}{PREFIX_SEPARATOR}{name}")
                    name = name[:64]
                function["function"]["name"] = name
                self.routes[name] = Route(server, tool["name"])
                self.functions.append(function)

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        progress: ProgressCallback,
    ) -> ToolOutcome:
        """Calls the tool offered as ``name``; any failure is an error outcome, never raised."""
        route = self.routes.get(name)
        if route is None:
            return ToolOutcome(f"There is no tool named '{name}'.", is_error=True)
        try:
            return await route.server.connection.call_tool(route.tool, arguments, progress)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return ToolOutcome(f"The call to '{name}' failed: {message}", is_error=True)

    async def approval_link(self, name: str, arguments: dict[str, Any]) -> str | None:
        """The page of the approval request that the call offered as ``name`` waits for."""
        route = self.routes.get(name)
        if route is None or route.server.approvals is None:
            return None
        session_id = route.server.connection.session_id
        return await route.server.approvals.link(route.tool, arguments, session_id)


class ConnectionFailed(Exception):
    """An MCP server could not be reached or refused the session."""

    def __init__(self, spec: ServerSpec, exc: BaseException):
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # the SDK's task groups wrap the real error
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        super().__init__(f"Could not connect to MCP server '{spec.name}' at {spec.url}: {detail}")
        self.spec = spec
