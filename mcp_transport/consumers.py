"""The async edge of MCP: an AsyncHttpConsumer that serves Streamable HTTP at /mcp.

It checks what needs no database (Host, Origin, Accept, size, JSON), hands each POST to
the sync protocol in one hop to the database thread (shared with whatever POSTs are
waiting, see :mod:`mcp_transport.batching`), and writes JSON or SSE.
Streams that outlive the hop (async tools, resumed streams, the session's GET stream) run
as tasks that wait with ``await`` on the channel layer, never in a thread.
"""

import asyncio
import functools
import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http.request import split_domain_port, validate_host

from mcp_transport import protocol, task_runs
from mcp_transport.batching import run_batched
from mcp_transport.calls import (
    run_approval_wait,
    run_continuation,
)
from mcp_transport.get_streams import follow, session_stream
from mcp_transport.http import (
    HttpFailure,
    readable_id,
)
from mcp_transport.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    RpcError,
    classify,
    rpc_error,
)
from mcp_transport.listen import run_listen
from mcp_transport.methods.exchange import LATEST_VERSION, ApprovalWait, Listen
from mcp_transport.ratelimit import check_rate_limit
from mcp_transport.streams import (
    Stream,
    call_group,
    call_key,
    session_group,
    sse_frame,
)
from qmcp_site.hot_settings import HOT_SETTINGS
from qmcp_site.observability import clean_id
from qmcp_site.storable import json_loads

logger = logging.getLogger(__name__)

# Tasks that carry on after their consumer has gone (a call whose client disconnected).
BACKGROUND: set[asyncio.Task] = set()
_SERVER_REQUEST_ID = re.compile(r"^([0-9a-f]{20})\.\d+$")


def _client_id(headers: dict[str, str], name: str) -> str:
    """A tracing id the client sent, cleaned; empty when it sent none (the JSON-RPC id and
    the session already identify an MCP call)."""
    value = headers.get(name)
    return clean_id(value) if value else ""


def _readable_id(body: bytes) -> Any:
    """The id of the request in ``body``, when the body is one readable request."""
    try:
        return readable_id(json_loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON, by orjson (a reply's JSON took longer to encode than
    the rest of its sending); by the standard library where orjson refuses it (an integer
    beyond 64 bits, say, which a client may use as its request's id)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


@functools.lru_cache(maxsize=256)
def _accepts(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header value admits ``media_type`` (remembered per value: a
    client sends the same header on every request)."""
    kind = media_type.split("/")[0]
    for item in accept.split(","):
        value = item.split(";")[0].strip().lower()
        if value in (media_type, f"{kind}/*", "*/*"):
            return True
    return False


@functools.lru_cache(maxsize=256)
def source_refusal(host: str, origin: str | None) -> tuple[int, str] | None:
    """The status and message that refuse a request from ``host`` with ``origin``, or None
    when both are allowed. Remembered per pair (a client sends the same ones every time)
    until a setting changes; the hosts and origins are the settings' own."""
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, HOT_SETTINGS.ALLOWED_HOSTS):
        return 421, f"Misdirected request: host '{host}' is not allowed."
    if origin is None:
        return None
    parts = urlsplit(origin)
    trusted = set(HOT_SETTINGS.CSRF_TRUSTED_ORIGINS)
    if not (parts.scheme in ("http", "https") and (parts.netloc == host or origin in trusted)):
        return 403, f"Forbidden: origin '{origin}' is not allowed."
    return None


@receiver(setting_changed)
def _forget_sources(**kwargs) -> None:
    source_refusal.cache_clear()


class McpConsumer(AsyncHttpConsumer):
    """POST messages, GET the server's stream (or resume one), DELETE the session."""

    # No per-request channel: streams that need the layer make their own channels.
    channel_layer_alias = "__mcp_none__"

    async def __call__(self, scope, receive, send):
        # With no channel layer the client is the only source of messages, so they are
        # received and dispatched in turn, as channels' await_many_dispatch would, without
        # its task per receive.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message):
        # Channels closes old database connections here with an extra thread hop per
        # message; the database threads (mcp_transport.batching) do that themselves.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = 0
        self.refused = False
        self.task: asyncio.Task | None = None
        self.keep_running = False
        self.client_gone = False
        self.protocol_version = LATEST_VERSION

    async def http_request(self, message):
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if not self.refused:
            limit = HOT_SETTINGS.QMCP_MAX_BODY_BYTES
            if self.size > limit or int(self._headers().get("content-length") or 0) > limit:
                self.refused = True
                await self.send_failure(HttpFailure(413, f"Request body exceeds {limit} bytes."))
            else:
                self.body.append(chunk)
        if message.get("more_body"):
            return
        if not self.refused:
            await self.handle(b"".join(self.body))
        if self.task is None:
            await self.disconnect()
            raise StopConsumer()

    async def http_disconnect(self, message):
        self.client_gone = True
        if self.task is not None and not self.task.done() and not self.keep_running:
            self.task.cancel()
        raise StopConsumer()

    def _headers(self) -> dict[str, str]:
        if not hasattr(self, "_header_map"):
            self._header_map = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]
            }
        return self._header_map

    # --- responses ---

    async def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None):
        """The whole response: ``body`` as JSON with its ``Content-Length``."""
        content = _json_bytes(body)
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        await self.send({"type": "http.response.body", "body": content})

    async def send_failure(self, failure: HttpFailure):
        await self.send_json(failure.status, failure.body(), failure.headers)

    async def start_sse(self, headers: dict[str, str] | None = None):
        raw = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
        ]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await self.send_headers(status=200, headers=raw)

    def spawn(self, coroutine, *, keep_running: bool) -> None:
        """Runs the rest of the response as a task; ``keep_running`` survives a disconnect."""
        self.keep_running = keep_running
        self.task = asyncio.ensure_future(coroutine)
        BACKGROUND.add(self.task)
        self.task.add_done_callback(_task_done)

    # --- requests ---

    async def handle(self, body: bytes):
        headers = self._headers()
        try:
            await check_rate_limit(self.scope, headers, body)
            self.check_host_and_origin(headers)
            method = self.scope["method"]
            if method == "POST":
                await self.handle_post(headers, body)
            elif method == "GET":
                await self.handle_get(headers)
            elif method == "DELETE":
                session_id = await run_batched(protocol.handle_delete, headers=headers)
                await get_channel_layer().group_send(
                    session_group(session_id), {"type": "mcp.session.ended"}
                )
                await self.send_response(200, b"", headers=[(b"content-type", b"text/plain")])
            else:
                await self.send_json(
                    405,
                    rpc_error(None, INVALID_REQUEST, "Method not allowed."),
                    {"allow": "GET, POST, DELETE"},
                )
        except HttpFailure as failure:
            if failure.rpc_id is None and self.scope["method"] == "POST":
                failure.rpc_id = _readable_id(body)
            await self.send_failure(failure)

    def check_host_and_origin(self, headers: dict[str, str]) -> None:
        """DNS-rebinding protection: the Host must be allowed, an Origin must be our own."""
        refusal = source_refusal(headers.get("host", ""), headers.get("origin"))
        if refusal is not None:
            raise HttpFailure(*refusal)

    async def handle_post(self, headers: dict[str, str], body: bytes):
        accept = headers.get("accept", "")
        if not (_accepts(accept, "application/json") and _accepts(accept, "text/event-stream")):
            raise HttpFailure(
                406, "Not Acceptable: Accept must include application/json and text/event-stream."
            )
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HttpFailure(415, "Unsupported Media Type: Content-Type must be application/json.")
        try:
            payload = json_loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise HttpFailure(400, f"Parse error: {exc}", PARSE_ERROR) from exc

        try:
            reply = await run_batched(
                protocol.handle_post,
                job_owner=headers.get("authorization", ""),
                headers=headers,
                payload=payload,
                request_id=_client_id(headers, "x-request-id"),
                correlation_id=_client_id(headers, "x-correlation-id"),
            )
        except HttpFailure:
            raise
        except Exception as exc:  # the database is down, say: nothing went out unrecorded
            logger.exception("MCP POST failed")
            raise HttpFailure(
                500, "Internal error: the request could not be completed.", INTERNAL_ERROR
            ) from exc
        await self.route_client_messages(reply.session_id, payload)
        if reply.status == 202:
            await self.send_response(202, b"", headers=[(b"content-type", b"text/plain")])
            return
        if reply.stream_id is None:
            await self.send_json(reply.status, reply.body, reply.headers)
            for run in reply.task_runs:
                task_runs.start(run)
            return

        self.protocol_version = reply.protocol_version
        if not reply.session_id and not reply.events:
            # A 2026 call that has sent nothing yet: the stream starts with its first message.
            # A call goes on if its client goes; a listen stream ends with its client.
            stream = Stream(self, "", reply.stream_id, reply.next_seq, reply.pending)
            stream.headers = reply.headers
            listens = any(isinstance(c, Listen) for c in reply.continuations)
            self.spawn(self.run_calls(stream, reply.continuations), keep_running=not listens)
            return
        await self.start_sse(reply.headers)
        for index, (event_id, data) in enumerate(reply.events):
            retry = settings.QMCP_MCP_SSE_RETRY_MS if index == 0 and not data else None
            last = index == len(reply.events) - 1 and reply.pending == 0
            await self.send_body(sse_frame(event_id, data, retry), more_body=not last)
        if reply.pending:
            stream = Stream(self, reply.session_id, reply.stream_id, reply.next_seq, reply.pending)
            self.spawn(self.run_calls(stream, reply.continuations), keep_running=True)

    async def run_calls(self, stream: Stream, continuations: list):
        runners = {ApprovalWait: run_approval_wait, Listen: run_listen}
        await asyncio.gather(
            *(runners.get(type(c), run_continuation)(stream, c) for c in continuations)
        )

    async def route_client_messages(self, session_id: str, payload: Any):
        """Client replies to server requests, and cancellations, go to the call they concern."""
        if not session_id:
            return
        layer = get_channel_layer()
        for raw in payload if isinstance(payload, list) else [payload]:
            if isinstance(raw, dict) and raw.get("method") not in (None, "notifications/cancelled"):
                continue  # a request or another notification: nothing to route
            try:
                message = classify(raw)
            except RpcError:
                continue
            if message.kind == "response":
                match = _SERVER_REQUEST_ID.match(str(raw.get("id")))
                if match:
                    await layer.group_send(
                        call_group(session_id, match.group(1)),
                        {
                            "type": "mcp.reply",
                            **{k: raw[k] for k in ("id", "result", "error") if k in raw},
                        },
                    )
            elif message.method == "notifications/cancelled":
                params = raw.get("params") or {}
                if isinstance(params, dict) and "requestId" in params:
                    await layer.group_send(
                        call_group(session_id, call_key(params["requestId"])),
                        {"type": "mcp.cancel"},
                    )

    async def handle_get(self, headers: dict[str, str]):
        if not _accepts(headers.get("accept", ""), "text/event-stream"):
            raise HttpFailure(406, "Not Acceptable: Accept must include text/event-stream.")
        reply = await run_batched(protocol.handle_get, headers=headers)
        await self.start_sse({"mcp-session-id": reply.session_id})
        for event_id, data, _ in reply.events:
            await self.send_body(sse_frame(event_id, data), more_body=True)
        if reply.stream_id is None:
            stream = session_stream(self.send_chunk, reply.session_id)
        elif not reply.complete:
            stream = follow(
                self.send_chunk, reply.session_id, reply.stream_id, reply.last_seq, reply.waits_for
            )
        else:
            await self.send_body(b"", more_body=False)
            return
        self.spawn(self.counted(stream, reply.principal), keep_running=False)

    async def send_chunk(self, body: bytes, more: bool) -> None:
        """Writes part of the response body; the last part has ``more`` False."""
        await self.send_body(body, more_body=more)

    async def counted(self, stream, principal) -> None:
        """Runs an open GET stream; counts it down when it ends, however it ends."""
        try:
            await stream
        finally:
            closed = run_batched(protocol.stream_closed, principal=principal)
            await asyncio.shield(closed)


def _task_done(task: asyncio.Task) -> None:
    BACKGROUND.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("MCP stream task failed", exc_info=task.exception())
