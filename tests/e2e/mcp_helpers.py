"""Connecting the official MCP SDK client (``mcp`` 2.x, over httpx2) to a live QMCP server."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


@dataclass
class Connection:
    """An open SDK session and what its HTTP client saw."""

    session: ClientSession
    init: types.InitializeResult | None = None
    session_ids: list[str] = field(default_factory=list)
    statuses: list[tuple[str, int]] = field(default_factory=list)
    resumptions: list[str] = field(default_factory=list)
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        """The ``Mcp-Session-Id`` the server gave (the first one seen)."""
        return self.session_ids[0]


@asynccontextmanager
async def connect(
    url: str,
    secret: str,
    *,
    initialize: bool = True,
    session_id: str | None = None,
    terminate_on_close: bool = True,
    **session_kwargs: Any,
) -> AsyncIterator[Connection]:
    """An initialized ClientSession that authenticates with ``secret``.

    With ``session_id`` (and ``initialize=False``) it joins an existing server session,
    as a client does after losing its connection. Log notifications are collected in
    ``Connection.logs`` unless a ``logging_callback`` is given, and every server
    notification (logs and progress included) and transport error in
    ``Connection.messages`` unless a ``message_handler`` is given. ``resumptions`` lists
    the ``Last-Event-ID`` of every request that resumed a stream.
    """
    headers = {"Authorization": f"Bearer {secret}"}
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    connection: Connection | None = None
    seen_ids: list[str] = []
    statuses: list[tuple[str, int]] = []
    resumptions: list[str] = []

    async def on_request(request: httpx2.Request) -> None:
        if last_event_id := request.headers.get("last-event-id"):
            resumptions.append(last_event_id)

    async def on_response(response: httpx2.Response) -> None:
        statuses.append((response.request.method, response.status_code))
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in seen_ids:
            seen_ids.append(sid)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        connection.logs.append(params)

    async def on_message(message: Any) -> None:
        connection.messages.append(message)

    session_kwargs.setdefault("logging_callback", on_log)
    session_kwargs.setdefault("message_handler", on_message)
    session_kwargs.setdefault("read_timeout_seconds", 15)
    async with httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(10, read=30),
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as http:
        async with streamable_http_client(
            url, http_client=http, terminate_on_close=terminate_on_close
        ) as (read, write):
            async with ClientSession(read, write, **session_kwargs) as session:
                connection = Connection(
                    session=session,
                    session_ids=seen_ids,
                    statuses=statuses,
                    resumptions=resumptions,
                )
                if initialize:
                    connection.init = await session.initialize()
                yield connection


def text_of(result: types.CallToolResult) -> str:
    """The concatenated text content of a tool result."""
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))
