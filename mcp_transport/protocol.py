"""MCP over Streamable HTTP, the sync part: one POST, GET or DELETE in, one reply out.

Everything here is plain Django and runs in one hop to a database thread per HTTP
request; the consumer does the I/O. A POST's messages are handed to the method handlers of
:mod:`mcp_transport.methods`; a tools/call of an ``async def`` tool is prepared there
(checked and recorded) and handed back as a :class:`Continuation` for the consumer to run.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from mcp_transport.http import (
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    STATELESS_VERSION,
    HttpFailure,
    authenticate,
    check_method_scope,
    check_stateless,
    is_stateless,
    legacy_header_version,
    method_not_found,
    readable_id,
    session_and_principal,
)
from mcp_transport.jsonrpc import INVALID_REQUEST, Message, RpcError, classify, rpc_error
from mcp_transport.methods import STATELESS_METHODS, handle_request
from mcp_transport.methods.exchange import (
    LATEST_VERSION,
    LOG_LEVELS,
    ApprovalWait,
    Continuation,
    Exchange,
    Listen,
    Outbound,
    TaskRun,
)
from mcp_transport.methods.input_required import HTTP_400_CODES
from mcp_transport.methods.results import stateless_result
from mcp_transport.methods.tools import call_withdraw
from mcp_transport.sessions import (
    events_after,
    events_store,
    new_stream_id,
    parse_event_id,
    session_close,
    stream_state,
    stream_waits_for,
    streams_open,
)
from users.principals import Principal


@dataclass
class PostReply:
    """What the consumer sends for a POST: JSON, or an SSE stream (stored for resumption)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON body; None with 202
    stream_id: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)  # (event id, data)
    pending: int = 0  # responses still to come from continuations
    continuations: list[Continuation] = field(default_factory=list)
    task_runs: list[TaskRun] = field(default_factory=list)  # started once the reply is out
    session_id: str = ""
    protocol_version: str = LATEST_VERSION
    next_seq: int = 0


def handle_post(
    *, headers: dict[str, str], payload: Any, request_id: str = "", correlation_id: str = ""
) -> PostReply:
    """Handles a parsed POST body; raises HttpFailure for an HTTP-level refusal.

    A 2026-07-28 request (see :func:`mcp_transport.http.is_stateless`) goes to
    :func:`handle_stateless_post`; everything else is the 2025 line, with sessions.
    """
    if is_stateless(headers, payload):
        return handle_stateless_post(
            headers=headers, payload=payload, request_id=request_id, correlation_id=correlation_id
        )
    is_batch = isinstance(payload, list)
    raws = payload if is_batch else [payload]
    if is_batch and not raws:
        raise HttpFailure(400, "Invalid Request: empty batch.")

    messages = []
    for raw in raws:
        try:
            messages.append(classify(raw))
        except RpcError as exc:
            if not is_batch:
                raise HttpFailure(400, exc.message) from exc
            messages.append(Message("invalid", {"error": exc.message}))

    initialize = [m for m in messages if m.kind == "request" and m.method == "initialize"]
    if initialize:
        principal = authenticate(headers)
        if is_batch:
            raise HttpFailure(400, "Invalid Request: initialize must not be part of a batch.")
        session, version = None, LATEST_VERSION
    else:
        legacy_header_version(headers)
        session, principal = session_and_principal(headers)
        version = session.protocol_version
        if is_batch and version != "2025-03-26":
            raise HttpFailure(400, f"Invalid Request: batches are not part of MCP {version}.")

    if not is_batch and messages[0].kind == "request":
        check_method_scope(principal, messages[0].method, headers, messages[0].raw["id"])
    reply = PostReply()
    replies: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for message in messages:
        if message.kind == "invalid":
            replies.append(rpc_error(None, INVALID_REQUEST, message.raw["error"]))
            continue
        if message.kind == "notification" and message.method == "notifications/cancelled":
            if session is not None:
                call_withdraw(session=session, params=message.raw.get("params"))
        if message.kind != "request":
            continue  # other notifications and responses are routed by the consumer
        ex = Exchange(
            principal=principal,
            session=session,
            protocol_version=version,
            rpc_id=message.raw["id"],
            http_request_id=request_id,
            correlation_id=correlation_id,
            outbound=Outbound(log_level=session.log_level if session else "info"),
        )
        response = handle_request(ex, message.method, message.raw.get("params"))
        session = ex.session or session
        notifications.extend(ex.notifications)
        if response is not None:
            replies.append(response)
        if ex.continuation is not None:
            reply.continuations.append(ex.continuation)

    if session is not None:
        reply.session_id = session.pk
        reply.protocol_version = session.protocol_version
        reply.headers["mcp-session-id"] = session.pk
    requests = sum(1 for m in messages if m.kind in ("request", "invalid"))
    if requests == 0:
        reply.status = 202
        return reply
    if not notifications and not reply.continuations:
        reply.body = replies if is_batch else replies[0]
        return reply
    # SSE: notifications come first, then the responses; all stored for Last-Event-ID.
    reply.stream_id = new_stream_id()
    reply.pending = len(reply.continuations)
    waits = [c for c in reply.continuations if isinstance(c, ApprovalWait)]
    priming = session.protocol_version >= "2025-11-25"
    # A stream that waits for a decision always stores a head event naming what it waits
    # for (sent as the priming event where the client can resume).
    head = priming or bool(waits)
    frames = ([""] if head else []) + [json.dumps(m) for m in notifications + replies]
    first_seq = 0 if head else 1
    stored = [
        (first_seq + i, data, reply.pending == 0 and i == len(frames) - 1)
        for i, data in enumerate(frames)
    ]
    wait = waits[0] if len(waits) == 1 else None
    events_store(
        session_id=session.pk,
        stream_id=reply.stream_id,
        events=stored,
        invocation_id=wait.invocation_id if wait else None,
        rpc_id=wait.rpc_id if wait else None,
    )
    reply.events = [(f"{reply.stream_id}-{seq}", data) for seq, data, _ in stored]
    if head and not priming:
        reply.events = reply.events[1:]
    reply.next_seq = first_seq + len(frames)
    return reply


def handle_stateless_post(
    *, headers: dict[str, str], payload: Any, request_id: str = "", correlation_id: str = ""
) -> PostReply:
    """One 2026-07-28 request: no session row is read or written; the audit row still is.

    Answers JSON, or SSE (not stored: there is no session to resume it in) when the call
    sends notifications, runs an async tool or waits for a reviewer.
    """
    if isinstance(payload, list):
        raise HttpFailure(400, "Invalid Request: batches are not part of MCP 2026-07-28.")
    try:
        message = classify(payload)
    except RpcError as exc:
        raise HttpFailure(400, exc.message, rpc_id=readable_id(payload)) from exc
    if message.kind != "request":
        return PostReply(status=202, protocol_version=STATELESS_VERSION)
    meta = check_stateless(headers, payload)
    rpc_id = payload["id"]
    if message.method not in STATELESS_METHODS:
        raise method_not_found(message.method, rpc_id)
    try:
        principal = authenticate(headers)
    except HttpFailure as failure:
        failure.rpc_id = rpc_id
        raise
    check_method_scope(principal, message.method, headers, rpc_id)
    level = meta.get(META_LOG_LEVEL)
    ex = Exchange(
        principal=principal,
        session=None,
        protocol_version=STATELESS_VERSION,
        rpc_id=rpc_id,
        http_request_id=request_id,
        correlation_id=correlation_id,
        outbound=Outbound(log_level=level if level in LOG_LEVELS else None),
        client_capabilities=meta.get(META_CAPABILITIES) or {},
        meta_client_name=_client_name(meta.get(META_CLIENT_INFO)),
    )
    response = handle_request(ex, message.method, payload.get("params"), STATELESS_METHODS)
    if isinstance(ex.continuation, Listen):
        try:
            _stream_opened(principal)  # counted down when the stream ends (mcp_transport.listen)
        except HttpFailure as failure:
            failure.rpc_id = rpc_id
            raise
    reply = PostReply(protocol_version=STATELESS_VERSION, task_runs=ex.task_runs)
    if response is not None and "result" in response:
        response["result"] = stateless_result(message.method, response["result"])
    elif response is not None and response["error"]["code"] in HTTP_400_CODES:
        reply.status = 400
    if ex.continuation is not None:
        reply.continuations.append(ex.continuation)
    if not ex.notifications and not reply.continuations:
        reply.body = response
        return reply
    reply.stream_id = new_stream_id()
    reply.pending = len(reply.continuations)
    frames = [json.dumps(m) for m in ex.notifications + ([response] if response else [])]
    reply.events = [("", data) for data in frames]
    return reply


@dataclass
class GetReply:
    session_id: str
    stream_id: str | None = None
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (id, data, final)
    last_seq: int = 0
    complete: bool = False
    waits_for: Any = None  # the gated invocation a waiting stream ends with
    principal: Principal | None = None  # whose open stream this is, when it stays open


def handle_get(*, headers: dict[str, str]) -> GetReply:
    """Opens the session's own stream, or resumes a stream after ``Last-Event-ID``.

    A stream that stays open counts against the token's ``QMCP_MCP_MAX_STREAMS`` (429 past
    it); the consumer calls :func:`stream_closed` with ``GetReply.principal`` when it ends.
    """
    legacy_header_version(headers)
    session, principal = session_and_principal(headers)
    last_event_id = headers.get("last-event-id")
    if not last_event_id:
        _stream_opened(principal)
        return GetReply(session_id=session.pk, principal=principal)
    parsed = parse_event_id(last_event_id)
    if parsed is None:
        raise HttpFailure(400, "Bad Request: malformed Last-Event-ID.")
    stream_id, seq = parsed
    exists, complete = stream_state(session_id=session.pk, stream_id=stream_id)
    if not exists:
        raise HttpFailure(404, "Unknown Last-Event-ID: no such stream in this session.")
    events = events_after(session_id=session.pk, stream_id=stream_id, seq=seq)
    if not complete:
        _stream_opened(principal)
    return GetReply(
        principal=principal,
        session_id=session.pk,
        stream_id=stream_id,
        events=[(e.event_id, e.data, e.final) for e in events],
        last_seq=events[-1].seq if events else seq,
        complete=complete,
        waits_for=stream_waits_for(session_id=session.pk, stream_id=stream_id),
    )


def _stream_opened(principal: Principal) -> None:
    limit = settings.QMCP_MCP_MAX_STREAMS
    if streams_open(principal=principal, delta=1) > limit:
        streams_open(principal=principal, delta=-1)
        raise HttpFailure(
            429,
            f"Too many open streams: this token already has {limit} open streams (GET or "
            "subscriptions/listen); close one first.",
            headers={"Retry-After": "30"},
        )


def stream_closed(*, principal: Principal) -> None:
    """Counts down an open stream of ``principal`` (see handle_get)."""
    streams_open(principal=principal, delta=-1)


def handle_delete(*, headers: dict[str, str]) -> str:
    """Closes the request's session; its id, so its streams can be told."""
    session, _ = session_and_principal(headers)
    session_close(session=session)
    return session.pk


def _client_name(client_info) -> str:
    """A 2026 request's ``clientInfo.name`` ("" when it sends none, or not a string)."""
    name = client_info.get("name") if isinstance(client_info, dict) else None
    return name[:200] if isinstance(name, str) else ""
