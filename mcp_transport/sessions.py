"""MCP sessions, stored SSE events and tasks: database rows, so any worker serves any request."""

import json
import re
import secrets
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mcp_transport.models import McpEvent, McpSession, McpTask
from qmcp_site.errors import ApplicationError
from qmcp_site.hot_settings import HOT_SETTINGS
from qmcp_site.rawjoin import columns, fetch_one
from tools.models import ToolInvocation
from tools.services import tool_invocation_release
from users.models import ApiToken, User, hash_token
from users.principals import Principal
from users.services import api_token_principal

# A GET stream lasts at most 300 s (get_streams.STREAM_MAX_SECONDS); its count outlives it a bit.
STREAM_COUNT_SECONDS = 360
# last_used_at and expires_at move at most this often, to keep the hot path free of writes.
TOUCH_RESOLUTION = timedelta(seconds=60)


class SessionNotFound(Exception):
    """Unknown, expired, closed, or opened by another token: all answered 404."""


def _idle_timeout() -> timedelta:
    return timedelta(seconds=settings.QMCP_MCP_SESSION_IDLE_SECONDS)


def _owner_filter(principal: Principal, prefix: str = "") -> dict:
    """The lookup of what the principal's token owns (its user's through the same OAuth
    client, for an OAuth token, so a refreshed token keeps its sessions; its user's without
    a token, for a session login)."""
    if principal.token is not None:
        return {f"{prefix}token": principal.token}
    return {
        f"{prefix}token__isnull": True,
        f"{prefix}user": principal.user,
        f"{prefix}oauth_client": principal.oauth_application,
    }


def session_create(
    *,
    principal: Principal,
    protocol_version: str,
    client_info: dict,
    client_capabilities: dict,
) -> McpSession:
    """A new session with a random 128-bit id, owned by the principal's token (or user).

    ``limit_exceeded`` when the token already has ``QMCP_MCP_MAX_SESSIONS`` open sessions,
    ``invalid`` when what the session would store exceeds ``QMCP_MCP_MAX_SESSION_BYTES``.
    """
    stored = len(json.dumps(client_info)) + len(json.dumps(client_capabilities))
    limit = settings.QMCP_MCP_MAX_SESSION_BYTES
    if stored > limit:
        raise ApplicationError(
            f"clientInfo and capabilities take {stored} bytes; at most {limit} are stored.",
            "invalid",
            {"limit": limit},
        )
    now = timezone.now()
    open_sessions = McpSession.objects.filter(
        closed_at__isnull=True, expires_at__gt=now, **_owner_filter(principal)
    ).count()
    if open_sessions >= settings.QMCP_MCP_MAX_SESSIONS:
        raise ApplicationError(
            f"This token has {open_sessions} open MCP sessions, the most allowed; end one "
            "with DELETE /mcp (or let it expire) before opening another.",
            "limit_exceeded",
            {"limit": settings.QMCP_MCP_MAX_SESSIONS},
        )
    return McpSession.objects.create(
        id=secrets.token_hex(16),
        user=principal.user,
        token=principal.token,
        oauth_client=principal.oauth_application,
        protocol_version=protocol_version,
        client_info=client_info,
        client_capabilities=client_capabilities,
        last_used_at=now,
        expires_at=now + _idle_timeout(),
    )


def session_get(*, session_id: str, principal: Principal) -> McpSession:
    """The live session, touched; SessionNotFound unless it belongs to this principal's token."""
    session = (
        McpSession.objects.filter(id=session_id, closed_at__isnull=True).first()
        if session_id and len(session_id) <= 32
        else None
    )
    if session is None or session.expires_at <= timezone.now():
        raise SessionNotFound(session_id)
    if not _owned_by(session, principal):
        raise SessionNotFound(session_id)
    _touch(session)
    return session


# (session id, token hash) -> (when cached, session, principal); see session_authenticate.
_AUTH_CACHE: dict[tuple[str, str], tuple[float, McpSession | None, Principal]] = {}
_AUTH_CACHE_MAX = 10_000


def auth_cache_clear(**kwargs) -> None:
    """Forgets every cached session (connected to token and user saves)."""
    _AUTH_CACHE.clear()


def session_authenticate(*, session_id: str, secret: str) -> tuple[McpSession, Principal] | None:
    """The session and its principal in one query, when ``secret`` is the session's token.

    None when anything does not match; the caller then checks token and session one by
    one, to give the precise error. A match is kept in memory for
    ``QMCP_AUTH_CACHE_SECONDS``: closing a session, or saving a token or a user, in this
    process takes effect at once; in another worker, within that time. Expiry of the
    session and of the token is checked on every request.
    """
    if not session_id or len(session_id) > 32 or not secret:
        return None
    key = (session_id, hash_token(secret))
    ttl = HOT_SETTINGS.QMCP_AUTH_CACHE_SECONDS
    cached = _AUTH_CACHE.get(key)
    now = timezone.now()
    if cached is not None and time.monotonic() - cached[0] < ttl:
        _, session, principal = cached
        if session.expires_at > now and not principal.token.is_expired:
            return session, principal
    session = _session_with_token(*key)
    if session is None or session.expires_at <= now:
        return None
    try:
        principal = api_token_principal(token=session.token)
    except ApplicationError:
        return None
    _touch(session)
    if ttl > 0:
        if len(_AUTH_CACHE) >= _AUTH_CACHE_MAX:
            _AUTH_CACHE.clear()
        _AUTH_CACHE[key] = (time.monotonic(), session, principal)
    return session, principal


def token_authenticate(*, secret: str, resource: str | None = None) -> Principal:
    """The principal of a bearer secret, as ``users.services.bearer_authenticate``; an API
    token's is kept in memory like :func:`session_authenticate` (the sessionless 2026
    requests' fast path), an OAuth token's is read every time, so a revocation counts at once.

    Saving a token or a user in this process forgets it at once; another worker checks
    again within ``QMCP_AUTH_CACHE_SECONDS``. The token's expiry is checked every time.
    """
    from users.services import bearer_authenticate

    key = ("", hash_token(secret))
    ttl = HOT_SETTINGS.QMCP_AUTH_CACHE_SECONDS
    cached = _AUTH_CACHE.get(key)
    if cached is not None and time.monotonic() - cached[0] < ttl:
        principal = cached[2]
        if not principal.token.is_expired:
            return principal
    principal = bearer_authenticate(secret=secret, resource=resource)
    if ttl > 0 and principal.token is not None:
        if len(_AUTH_CACHE) >= _AUTH_CACHE_MAX:
            _AUTH_CACHE.clear()
        _AUTH_CACHE[key] = (time.monotonic(), None, principal)
    return principal


# What an MCP request needs of its session, token and user; the rest stays deferred.
_SESSION_FIELDS = (
    "id",
    "user",
    "token",
    "protocol_version",
    "log_level",
    "subscriptions",
    "expires_at",
    "last_used_at",
)
_TOKEN_FIELDS = ("id", "user", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at")
_USER_FIELDS = ("id", "email", "is_active", "is_staff", "is_superuser")


def _session_with_token(session_id: str, token_hash: str) -> McpSession | None:
    """The open session with its token and user, in one join on every MCP request's path.

    Plain SQL although the auth cache holds the answer for ``QMCP_AUTH_CACHE_SECONDS``:
    that is one lookup per session and second, 64 a second at 64 sessions, and the same
    join through the ORM (select_related, only) cost 2,190 µs and 35,800 opcodes against
    232 µs and 3,400 (benchmarks/RESULTS.md).
    """
    sql = (
        f"SELECT {columns(McpSession, 's', _SESSION_FIELDS)}, "
        f"{columns(ApiToken, 't', _TOKEN_FIELDS)}, {columns(User, 'u', _USER_FIELDS)} "
        f"FROM {McpSession._meta.db_table} s "
        f"JOIN {ApiToken._meta.db_table} t ON t.id = s.token_id "
        f"JOIN {User._meta.db_table} u ON u.id = t.user_id "
        "WHERE s.id = %s AND t.token_hash = %s AND s.closed_at IS NULL"
    )
    found = fetch_one(
        sql,
        [session_id, token_hash],
        ((McpSession, _SESSION_FIELDS), (ApiToken, _TOKEN_FIELDS), (User, _USER_FIELDS)),
    )
    if found is None:
        return None
    session, token, user = found
    token.user = user
    session.token = token
    return session


def _touch(session: McpSession) -> None:
    now = timezone.now()
    if now - session.last_used_at > TOUCH_RESOLUTION:
        session.last_used_at = now
        session.expires_at = now + _idle_timeout()
        McpSession.objects.filter(pk=session.pk).update(
            last_used_at=now, expires_at=session.expires_at
        )


def tasks_owned(*, principal: Principal, stateless: bool = False):
    """The MCP tasks the principal's token made (its user's, without a token): a task is
    never reachable from another token, whatever its scopes. ``stateless`` picks the
    2026-07-28 tasks (no session) over the 2025-11-25 ones; an expired task is gone."""
    return (
        McpTask.objects.select_related("invocation")
        .filter(session__isnull=stateless, **_owner_filter(principal))
        .exclude(expires_at__lte=timezone.now())
    )


def task_create(
    *,
    invocation: ToolInvocation,
    principal: Principal,
    session: McpSession | None = None,
    ttl_ms: int | None = None,
    input_responses: dict[str, Any] | None = None,
) -> McpTask:
    """The task of ``invocation``, owned by the principal's token (or user), committed when
    this returns. A sessionless (2026) task expires ``ttl_ms`` from now."""
    expires_at = None
    if session is None and ttl_ms is not None:
        expires_at = timezone.now() + timedelta(milliseconds=ttl_ms)
    return McpTask.objects.create(
        invocation=invocation,
        session=session,
        user=principal.user,
        token=principal.token,
        oauth_client=principal.oauth_application,
        ttl_ms=ttl_ms,
        input_responses=input_responses or {},
        expires_at=expires_at,
    )


def task_park(*, task_id, owner: str, requests: dict[str, Any]) -> bool:
    """Parks a task on its client's input: ``requests`` are the questions still open, and
    the run (``owner``) gives up its lease, in one transaction, so an answer that lands
    at once finds the task ready to run again. False if the run had lost its lease."""
    with transaction.atomic():
        if not tool_invocation_release(invocation_id=task_id, owner=owner):
            return False
        McpTask.objects.filter(pk=task_id).update(input_requests=requests)
    return True


def task_answer(*, task_id, responses: dict[str, Any]) -> McpTask | None:
    """Records the client's answers to a parked task's open questions; answers to anything
    else (unknown keys, questions already answered) are ignored.

    Returns the task when these answers closed its last open question, so its tool runs
    again; None otherwise. The row is locked meanwhile, so of two updates that race for the
    last question, one gets the task.
    """
    with transaction.atomic():
        task = McpTask.objects.select_for_update().filter(pk=task_id).first()
        if task is None or not task.input_requests:
            return None
        answered = {k: v for k, v in responses.items() if k in task.input_requests}
        if not answered:
            return None
        task.input_responses = {**task.input_responses, **answered}
        task.input_requests = {k: v for k, v in task.input_requests.items() if k not in answered}
        task.save(update_fields=["input_responses", "input_requests"])
    return None if task.input_requests else task


def streams_open(*, principal: Principal, delta: int) -> int:
    """Counts the token's open GET streams up (``delta=1``) or down (-1); the new count.

    Kept in the cache (Redis when configured, so all workers count together), with an
    expiry a little past the longest stream, so a worker that dies leaks nothing for long.
    """
    from django.core.cache import cache

    owner = f"t{principal.token.pk}" if principal.token is not None else f"u{principal.user.pk}"
    key = f"qmcp.mcp.streams.{owner}"
    cache.add(key, 0, timeout=STREAM_COUNT_SECONDS)
    try:
        count = cache.incr(key, delta)
    except ValueError:  # expired between add and incr
        cache.set(key, max(delta, 0), timeout=STREAM_COUNT_SECONDS)
        count = max(delta, 0)
    if count < 0:
        cache.set(key, 0, timeout=STREAM_COUNT_SECONDS)
    return count


def _owned_by(session: McpSession, principal: Principal) -> bool:
    """See :func:`_owner_filter`."""
    if principal.token is not None:
        return session.token_id == principal.token.pk
    application = principal.oauth_application
    return (
        session.token_id is None
        and session.user_id == principal.user.pk
        and session.oauth_client_id == (application.pk if application is not None else None)
    )


def session_close(*, session: McpSession) -> None:
    McpSession.objects.filter(pk=session.pk).update(closed_at=timezone.now())
    for key in [k for k in _AUTH_CACHE if k[0] == session.pk]:
        _AUTH_CACHE.pop(key, None)


def session_open_subscriptions(*, session_id: str) -> list[str] | None:
    """The subscribed URIs of an open session; None once it is closed, deleted or expired."""
    found = (
        McpSession.objects.filter(
            id=session_id, closed_at__isnull=True, expires_at__gt=timezone.now()
        )
        .values_list("subscriptions", flat=True)
        .first()
    )
    return None if found is None else list(found)


def sessions_subscribed(*, uri: str) -> list[str]:
    """The ids of the open sessions subscribed to ``uri``."""
    candidates = McpSession.objects.filter(
        closed_at__isnull=True, expires_at__gt=timezone.now()
    ).exclude(subscriptions=[])
    return [pk for pk, uris in candidates.values_list("pk", "subscriptions") if uri in uris]


def session_is_open(*, session_id: str) -> bool:
    """Whether the session exists, is not closed and has not expired."""
    return session_open_subscriptions(session_id=session_id) is not None


def session_update(*, session: McpSession, **fields) -> None:
    for name, value in fields.items():
        setattr(session, name, value)
    McpSession.objects.filter(pk=session.pk).update(**fields)


def sessions_purge() -> int:
    """Deletes sessions that expired or closed over a day ago, with their events and tasks,
    and the sessionless tasks past their ttl (their invocations stay: they are the audit)."""
    cutoff = timezone.now() - timedelta(days=1)
    deleted, _ = McpSession.objects.filter(expires_at__lt=cutoff).delete()
    closed, _ = McpSession.objects.filter(closed_at__lt=cutoff).delete()
    old = timezone.now() - timedelta(seconds=settings.QMCP_MCP_EVENT_RETENTION_SECONDS)
    events, _ = McpEvent.objects.filter(created_at__lt=old).delete()
    tasks, _ = McpTask.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted + closed + events + tasks


def new_stream_id() -> str:
    return secrets.token_hex(8)


def events_store(
    *,
    session_id: str,
    stream_id: str,
    events: list[tuple[int, str, bool]],
    invocation_id=None,
    rpc_id=None,
) -> None:
    """Stores ``(seq, data, final)`` events of one stream; the first names what a waiting
    stream waits for (``invocation_id``, and the ``rpc_id`` its response answers)."""
    McpEvent.objects.bulk_create(
        McpEvent(
            session_id=session_id,
            stream_id=stream_id,
            seq=seq,
            data=data,
            final=final,
            invocation_id=invocation_id if i == 0 else None,
            rpc_id=rpc_id if i == 0 else None,
        )
        for i, (seq, data, final) in enumerate(events)
    )


_EVENT_ID = re.compile(r"^([0-9a-f]{1,32})-([0-9]{1,9})$")


def parse_event_id(event_id: str) -> tuple[str, int] | None:
    """``(stream_id, seq)`` from an event id we issued, or None for anything else."""
    match = _EVENT_ID.match((event_id or "").strip())
    return (match.group(1), int(match.group(2))) if match else None


def events_after(*, session_id: str, stream_id: str, seq: int) -> list[McpEvent]:
    """The session's stored events of ``stream_id`` after ``seq``, in order."""
    return list(
        McpEvent.objects.filter(session_id=session_id, stream_id=stream_id, seq__gt=seq).order_by(
            "seq"
        )
    )


def stream_state(*, session_id: str, stream_id: str) -> tuple[bool, bool]:
    """Whether the session has this stream, and whether its final event is stored."""
    finals = set(
        McpEvent.objects.filter(session_id=session_id, stream_id=stream_id).values_list(
            "final", flat=True
        )
    )
    return bool(finals), True in finals


def stream_waits_for(*, session_id: str, stream_id: str):
    """The gated invocation a stream waits for, if it is such a stream."""
    return (
        McpEvent.objects.filter(session_id=session_id, stream_id=stream_id)
        .exclude(invocation=None)
        .values_list("invocation_id", flat=True)
        .first()
    )


def stream_waiting_call(*, session_id: str, rpc_id):
    """The gated invocation that the session's request ``rpc_id`` waits for, if any."""
    heads = McpEvent.objects.filter(
        session_id=session_id, invocation__status=ToolInvocation.Status.AWAITING_APPROVAL
    )
    for invocation_id, stored_id in heads.values_list("invocation_id", "rpc_id"):
        # JSON ids compare by type too: request 1 is not request "1".
        if stored_id == rpc_id and type(stored_id) is type(rpc_id):
            return invocation_id
    return None
