import logging
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from qmcp_site.errors import ApplicationError
from qmcp_site.rawjoin import columns, fetch_one, insert_one
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import (
    AsyncToolContext,
    ToolContext,
    ToolResult,
    ToolSpec,
    all_tools,
    get_tool,
)
from tools.signals import invocation_finished, invocation_gated
from users.models import ApiToken
from users.principals import Principal

logger = logging.getLogger(__name__)

Status = ToolInvocation.Status


def tool_policy_defaults(spec: ToolSpec) -> dict[str, Any]:
    return {"requires_approval": spec.requires_approval}


_POLICY_CACHE: dict[str, tuple[float, ToolPolicy]] = {}


def tool_policy_cache_clear(**kwargs) -> None:
    """Forgets cached policies (connected to ToolPolicy's save and delete signals)."""
    _POLICY_CACHE.clear()


def tool_policy_get(*, spec: ToolSpec) -> ToolPolicy:
    """The tool's policy, created from the registry's defaults on first use.

    Kept in memory for ``QMCP_POLICY_CACHE_SECONDS``: a change made in this process is
    seen at once, one made in another worker within that time.
    """
    ttl = settings.QMCP_POLICY_CACHE_SECONDS
    cached = _POLICY_CACHE.get(spec.name)
    if cached is not None and time.monotonic() - cached[0] < ttl:
        return cached[1]
    policy = _tool_policy_load(spec)
    if ttl > 0:
        _POLICY_CACHE[spec.name] = (time.monotonic(), policy)
    return policy


def _tool_policy_load(spec: ToolSpec) -> ToolPolicy:
    found = fetch_one(
        f"SELECT {columns(ToolPolicy, 'p')} FROM {ToolPolicy._meta.db_table} p "
        "WHERE p.tool_name = %s",
        [spec.name],
        ((ToolPolicy, None),),
    )
    policy = found[0] if found else None
    if policy is None:
        policy, _ = ToolPolicy.objects.get_or_create(
            tool_name=spec.name, defaults=tool_policy_defaults(spec)
        )
    return policy


def tool_policies_sync() -> list[ToolPolicy]:
    """Creates the missing policy rows for every registered tool; existing rows are kept."""
    existing = set(ToolPolicy.objects.values_list("tool_name", flat=True))
    created = [
        ToolPolicy(tool_name=spec.name, **tool_policy_defaults(spec))
        for spec in all_tools()
        if spec.name not in existing
    ]
    ToolPolicy.objects.bulk_create(created, ignore_conflicts=True)
    return created


def tool_invoke(
    *,
    name: str,
    arguments: Any,
    principal: Principal,
    via: str,
    mcp_session_id: str = "",
    request_id: str = "",
    correlation_id: str = "",
    notify: Callable[[str, dict], None] | None = None,
) -> ToolInvocation:
    """Records one tool call and runs it, or leaves it waiting for approval.

    Exactly one ToolInvocation row is written per call. A refusal (unknown tool, missing
    scope, disabled tool, invalid arguments) is recorded as ``refused`` and then raised as
    ApplicationError. Otherwise the returned invocation is ``succeeded``, ``failed`` (the
    tool raised; its error is in ``error`` and an ``isError`` result) or
    ``awaiting_approval`` (the ``invocation_gated`` signal has been sent in the same
    transaction).
    """
    invocation, spec, args = tool_invocation_prepare(
        name=name,
        arguments=arguments,
        principal=principal,
        via=via,
        mcp_session_id=mcp_session_id,
        request_id=request_id,
        correlation_id=correlation_id,
    )
    if invocation.status != Status.RUNNING:
        return invocation
    return tool_invocation_execute(
        invocation=invocation, spec=spec, args=args, principal=principal, notify=notify
    )


def tool_invocation_prepare(**call) -> tuple[ToolInvocation, ToolSpec, Any]:
    """Checks a call; see :func:`tool_invoke`. Returns the invocation, the tool and its
    validated arguments.

    Refusals are recorded and raised. A gated call is saved ``awaiting_approval``. A call
    that may run comes back ``running`` but not yet saved: a sync tool's run and its audit
    row then commit together (:func:`tool_invocation_execute`), and an async tool's caller
    saves it first with :func:`tool_invocation_start`.
    """
    record = _invocation_record(**call)
    name, principal = call["name"], call["principal"]
    spec = get_tool(name)
    try:
        if spec is None:
            raise ApplicationError(f"Unknown tool '{name}'.", "unknown_tool", {"tool": name})
        principal.require_scope(ApiToken.Scope.TOOLS_CALL)
        policy = tool_policy_get(spec=spec)
        if not policy.enabled:
            raise ApplicationError(
                f"Tool '{name}' is disabled by its policy.", "tool_disabled", {"tool": name}
            )
        args = spec.parse_arguments(call["arguments"])
    except ApplicationError as exc:
        _record_refusal(record, exc)
        raise

    if policy.requires_approval:
        with transaction.atomic():
            invocation = ToolInvocation.objects.create(**record, status=Status.AWAITING_APPROVAL)
            invocation_gated.send(sender=ToolInvocation, invocation=invocation, policy=policy)
        return invocation, spec, args

    invocation = ToolInvocation(**record, status=Status.RUNNING, started_at=timezone.now())
    return invocation, spec, args


def tool_invocation_start(*, invocation: ToolInvocation) -> ToolInvocation:
    """Saves a prepared ``running`` invocation before a long (async) run."""
    invocation.save(force_insert=True)
    return invocation


def tool_invoke_refuse(*, error: ApplicationError, **call) -> None:
    """Records a call refused before it could be parsed (say, a malformed body), then raises
    ``error``. Takes the same keyword arguments as :func:`tool_invoke`."""
    _record_refusal(_invocation_record(**call), error)
    raise error


def invocation_record_read(
    *, name: str, arguments: Any, result: dict[str, Any], **call
) -> ToolInvocation:
    """Audits a read that is not a tool call (people's profiles through ``/api/users/``):
    one ``succeeded`` row, as a call leaves, whose ``result`` says what was read. Takes
    :func:`tool_invoke`'s other keyword arguments (principal, via, request ids)."""
    now = timezone.now()
    return ToolInvocation.objects.create(
        **_invocation_record(name=name, arguments=arguments, **call),
        status=Status.SUCCEEDED,
        result=result,
        started_at=now,
        finished_at=now,
        duration_ms=0.0,
    )


def _record_refusal(record: dict[str, Any], error: ApplicationError) -> None:
    ToolInvocation.objects.create(
        **record, status=Status.REFUSED, error=error.as_dict(), finished_at=timezone.now()
    )


def _invocation_record(
    *,
    name: str,
    arguments: Any,
    principal: Principal,
    via: str,
    mcp_session_id: str = "",
    request_id: str = "",
    correlation_id: str = "",
) -> dict[str, Any]:
    return {
        "tool_name": str(name)[:100],
        "arguments": arguments,
        "principal": principal.user,
        "principal_label": principal.label[:255],
        "token": principal.token,
        "via": via,
        "mcp_session_id": mcp_session_id,
        "request_id": request_id[:128],
        "correlation_id": correlation_id[:128],
    }


def tool_invocation_execute(
    *,
    invocation: ToolInvocation,
    spec: ToolSpec,
    args: Any,
    principal: Principal | None,
    notify: Callable[[str, dict], None] | None = None,
) -> ToolInvocation:
    """Runs a ``running`` invocation's tool and records the outcome.

    The tool's writes and the audit row commit in one transaction: a process that dies
    mid-run leaves neither. The tool runs in a savepoint, so one that fails half way leaves
    nothing behind but the ``failed`` record. An ``async def`` tool runs on the event loop
    with an AsyncToolContext that can notify but not ask the client.
    """
    started = time.perf_counter()
    if spec.annotations.get("readOnlyHint") is True:
        # A read-only tool writes nothing to roll back: its audit row needs no transaction.
        try:
            result = _call(spec, args, principal, invocation, notify)
        except Exception as exc:
            result = tool_error_result(spec, exc)
        return tool_invocation_finish(
            invocation=invocation, result=result, duration=time.perf_counter() - started
        )
    with transaction.atomic():
        try:
            with transaction.atomic():
                result = _call(spec, args, principal, invocation, notify)
        except Exception as exc:
            result = tool_error_result(spec, exc)
        return tool_invocation_finish(
            invocation=invocation, result=result, duration=time.perf_counter() - started
        )


def _call(spec: ToolSpec, args, principal, invocation, notify) -> ToolResult:
    if spec.is_async:
        context = AsyncToolContext(principal=principal, invocation=invocation)
        return spec.to_result(async_to_sync(spec.func)(args, context))
    context = ToolContext(principal=principal, invocation=invocation, notify=notify)
    return spec.to_result(spec.func(args, context))


def tool_error_result(spec: ToolSpec, exc: Exception) -> ToolResult:
    """The ``isError`` result for an exception raised by a tool; internals never leak."""
    if isinstance(exc, ApplicationError):
        result = ToolResult.text(exc.message)
        result.error = exc.as_dict()
    else:
        logger.error("tool %s failed", spec.name, exc_info=exc)
        message = f"Tool '{spec.name}' failed unexpectedly."
        result = ToolResult.text(message)
        result.error = {"code": "tool_failed", "message": message}
    result.is_error = True
    return result


def tool_invocation_finish(
    *, invocation: ToolInvocation, result: ToolResult, duration: float
) -> ToolInvocation:
    """Records the outcome of a run: ``failed`` for an ``isError`` result, else ``succeeded``."""
    error = result.error
    if result.is_error and error is None:
        message = _first_text(result) or "The tool reported an error."
        error = {"code": "tool_failed", "message": message}
    invocation.status = Status.FAILED if result.is_error else Status.SUCCEEDED
    invocation.result = result.as_dict()
    invocation.error = error
    invocation.finished_at = timezone.now()
    invocation.duration_ms = round(duration * 1000, 3)
    if invocation._state.adding:
        insert_one(invocation)  # the audit row of every call: SQL built once
    else:
        invocation.save(update_fields=["status", "result", "error", "finished_at", "duration_ms"])
    return invocation


def tool_invocation_cancel(*, invocation: ToolInvocation, reason: str = "") -> bool:
    """Marks a running or waiting invocation ``cancelled``; False if it had already ended."""
    updated = ToolInvocation.objects.filter(
        pk=invocation.pk, status__in=[Status.RUNNING, Status.AWAITING_APPROVAL]
    ).update(
        status=Status.CANCELLED,
        error={"code": "cancelled", "message": reason or "Cancelled by the client."},
        finished_at=timezone.now(),
    )
    if updated:
        _announce_finished(invocation.pk)
    return bool(updated)


def _first_text(result: ToolResult) -> str:
    for item in result.content:
        if item.get("type") == "text":
            return item.get("text", "")
    return ""


def _announce_finished(invocation_id) -> None:
    transaction.on_commit(
        lambda: invocation_finished.send(sender=ToolInvocation, invocation_id=invocation_id)
    )


def tool_invocation_claim(*, invocation_id) -> bool:
    """Moves an approved call from ``awaiting_approval`` to ``running``, exactly once.

    A conditional UPDATE: of two workers or reviewers racing, one wins and the other
    gets False.
    """
    return bool(
        ToolInvocation.objects.filter(pk=invocation_id, status=Status.AWAITING_APPROVAL).update(
            status=Status.RUNNING, started_at=timezone.now()
        )
    )


def tool_invocation_run_approved(*, invocation_id) -> ToolInvocation | None:
    """Claims and runs an approved call as its caller; None if another run claimed it."""
    if not tool_invocation_claim(invocation_id=invocation_id):
        return None
    invocation = ToolInvocation.objects.select_related("principal", "token").get(pk=invocation_id)
    spec = get_tool(invocation.tool_name)
    principal = None
    if invocation.principal is not None:
        principal = (
            Principal.for_token(invocation.token)
            if invocation.token is not None
            else Principal.for_user(invocation.principal)
        )
    try:
        if spec is None:
            raise ApplicationError(f"Tool '{invocation.tool_name}' no longer exists.")
        args = spec.parse_arguments(invocation.arguments)
    except ApplicationError as exc:
        result = ToolResult.text(exc.message)
        result.is_error, result.error = True, exc.as_dict()
        with transaction.atomic():
            finished = tool_invocation_finish(invocation=invocation, result=result, duration=0)
            _announce_finished(invocation.pk)
        return finished
    finished = tool_invocation_execute(
        invocation=invocation, spec=spec, args=args, principal=principal
    )
    _announce_finished(invocation.pk)  # committed already: sent at once
    return finished


def tool_invocation_end(*, invocation_id, status: str, message: str, code: str) -> bool:
    """Ends a waiting call without running it (rejected, expired or cancelled).

    The reviewer's reason becomes the call's ``isError`` result. False if the call was no
    longer waiting.
    """
    result = ToolResult.text(message)
    result.is_error = True
    updated = ToolInvocation.objects.filter(
        pk=invocation_id, status=Status.AWAITING_APPROVAL
    ).update(
        status=status,
        result=result.as_dict(),
        error={"code": code, "message": message},
        finished_at=timezone.now(),
    )
    if updated:
        _announce_finished(invocation_id)
    return bool(updated)


def tool_invocations_end(*, invocation_ids: list, status: str, message: str, code: str) -> int:
    """:func:`tool_invocation_end` for many calls at once: one SELECT and one UPDATE of
    those still waiting, each announced after commit. Returns how many ended; the caller
    holds their requests' locks, so none of them is approved meanwhile."""
    if not invocation_ids:
        return 0
    waiting = ToolInvocation.objects.filter(pk__in=invocation_ids, status=Status.AWAITING_APPROVAL)
    ended = list(waiting.values_list("pk", flat=True))
    result = ToolResult.text(message)
    result.is_error = True
    ToolInvocation.objects.filter(pk__in=ended, status=Status.AWAITING_APPROVAL).update(
        status=status,
        result=result.as_dict(),
        error={"code": code, "message": message},
        finished_at=timezone.now(),
    )

    def announce():
        for pk in ended:
            invocation_finished.send(sender=ToolInvocation, invocation_id=pk)

    if ended:
        transaction.on_commit(lambda: in_one_event_loop(announce))
    return len(ended)


def in_one_event_loop(function: Callable[[], None]) -> None:
    """Calls ``function`` (in this thread) while one event loop runs beside it, so the
    Channels pushes its signal receivers make with ``async_to_sync`` hop to that loop
    instead of each starting an event loop of its own: the many pushes of a bulk expiry
    then cost a fraction as much."""
    async_to_sync(sync_to_async(function))()


def tool_invocation_raise_failure(invocation: ToolInvocation) -> ToolInvocation:
    """Raises a failed invocation's error (naming the invocation), as the REST APIs answer
    it; returns any other invocation."""
    if invocation.status != Status.FAILED:
        return invocation
    error = invocation.error or {}
    raise ApplicationError(
        error.get("message", "The tool failed."),
        error.get("code", "tool_failed"),
        {**error.get("details", {}), "invocation_id": str(invocation.pk)},
    )
