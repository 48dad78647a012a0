import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from qmcp_site.errors import ApplicationError
from qmcp_site.hot_settings import HOT_SETTINGS
from qmcp_site.rawjoin import build_new, insert_later
from qmcp_site.storable import storable_check, storable_copy, storable_text
from tools.gate import TOOL_GATE, CallFacts
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import (
    AsyncToolContext,
    ToolContext,
    ToolResult,
    ToolSpec,
    all_tools,
    get_tool,
)
from tools.signals import approved_run_notes, invocation_finished, invocation_gated
from users.models import ApiToken
from users.principals import Principal
from users.services import caller_check

logger = logging.getLogger(__name__)

Status = ToolInvocation.Status


def tool_policy_defaults(spec: ToolSpec) -> dict[str, Any]:
    return {"requires_approval": spec.requires_approval, "risk_level": spec.risk}


_POLICY_CACHE: dict[str, tuple[float, ToolPolicy]] = {}


def tool_policy_cache_clear(**kwargs) -> None:
    """Forgets cached policies (connected to ToolPolicy's save and delete signals)."""
    _POLICY_CACHE.clear()


def tool_policy_get(*, spec: ToolSpec) -> ToolPolicy:
    """The tool's policy, created from the registry's defaults on first use.

    Kept in memory for ``QMCP_POLICY_CACHE_SECONDS``: a change made in this process is
    seen at once, one made in another worker within that time.
    """
    ttl = HOT_SETTINGS.QMCP_POLICY_CACHE_SECONDS
    cached = _POLICY_CACHE.get(spec.name)
    if cached is not None and time.monotonic() - cached[0] < ttl:
        return cached[1]
    policy = _tool_policy_load(spec)
    if ttl > 0:
        _POLICY_CACHE[spec.name] = (time.monotonic(), policy)
    return policy


def _tool_policy_load(spec: ToolSpec) -> ToolPolicy:
    """The policy from the database (the ORM: the cache above makes it rare)."""
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
    reason: str = "",
    client_name: str | Callable[[], str] = "",
    notify: Callable[[str, dict], None] | None = None,
) -> ToolInvocation:
    """Records one tool call and runs it, or leaves it waiting for approval.

    ``reason`` is the agent's stated reason for the call, shown to the reviewers of a
    gated call; ``client_name`` the MCP client's name (or a function that reads it), which
    approval rules may test.

    Exactly one ToolInvocation row is written per call. A refusal (arguments no database
    can store, unknown tool, missing scope, disabled tool, invalid arguments) is recorded as
    ``refused``, with a storable copy of the arguments, and then raised as ApplicationError.
    Otherwise the returned invocation is ``succeeded``, ``failed`` (the tool raised; its
    error is in ``error`` and an ``isError`` result) or ``awaiting_approval`` (the
    ``invocation_gated`` signal has been sent in the same transaction).
    """
    invocation, spec, args = tool_invocation_prepare(
        name=name,
        arguments=arguments,
        principal=principal,
        via=via,
        mcp_session_id=mcp_session_id,
        request_id=request_id,
        correlation_id=correlation_id,
        reason=reason,
        client_name=client_name,
    )
    if invocation.status != Status.RUNNING:
        return invocation
    return tool_invocation_execute(
        invocation=invocation, spec=spec, args=args, principal=principal, notify=notify
    )


def tool_invocation_prepare(
    *, reason: str = "", client_name: str | Callable[[], str] = "", **call
) -> tuple[ToolInvocation, ToolSpec, Any]:
    """Checks a call; see :func:`tool_invoke`. Returns the invocation, the tool and its
    validated arguments.

    Refusals are recorded and raised. The gate (``tools.gate.TOOL_GATE``) then decides what
    the call needs; the rule that decided is recorded in ``rule``, and a rule that denies
    the call refuses it (``denied_by_rule``, with the rule's message). A gated call is
    saved ``awaiting_approval`` with the tool's preview, unless the preview says the call
    cannot succeed: it is then refused (``precondition_failed``) and no reviewer is asked.
    A call that may run comes back ``running`` but not yet saved: a sync tool's run and its
    audit row then commit together (:func:`tool_invocation_execute`), and an async tool's
    caller saves it first with :func:`tool_invocation_start`.
    """
    record = _invocation_record(**call)
    try:
        storable_check(record["arguments"])
        spec, policy = tool_call_check(name=call["name"], principal=call["principal"])
        args = spec.parse_arguments(call["arguments"])
        facts = CallFacts(spec, policy, args, call["principal"], client=client_name)
        decision = TOOL_GATE.decide(facts)
        record["rule"] = decision.rule
        record["would_require"] = decision.would_require
        if decision.outcome == "deny":
            raise ApplicationError(
                decision.message,
                "denied_by_rule",
                {"tool": spec.name, "rule": decision.rule},
            )
        preview = spec.make_preview(args) if decision.requires_approval else None
        if preview is not None and preview.refusal:
            raise ApplicationError(
                preview.refusal,
                "precondition_failed",
                {"tool": spec.name, "preview": preview.as_dict()},
            )
    except ApplicationError as exc:
        _record_refusal(record, exc)
        raise

    if decision.requires_approval:
        # The approval is bound to these arguments; the run is checked with this client.
        record["arguments_digest"] = facts.digest
        record["client_name"] = facts.client_name[:200]
        with transaction.atomic():
            invocation = ToolInvocation.objects.create(**record, status=Status.AWAITING_APPROVAL)
            invocation_gated.send(
                sender=ToolInvocation,
                invocation=invocation,
                decision=decision,
                preview=preview.as_dict() if preview is not None else None,
                reason=str(reason or "")[:2000],
            )
        return invocation, spec, args

    invocation = build_new(
        ToolInvocation, **record, status=Status.RUNNING, started_at=timezone.now()
    )
    return invocation, spec, args


def tool_call_check(
    *, name: str, principal: Principal, fresh: bool = False
) -> tuple[ToolSpec, ToolPolicy]:
    """The gate every call passes when it is made, and an approved call again when it runs.

    Raises ``unknown_tool``, ``missing_scope`` (the principal lacks ``tools:call``) or
    ``tool_disabled``. ``fresh`` reads the policy from the database instead of the cache.
    """
    spec = get_tool(name)
    if spec is None:
        raise ApplicationError(f"Unknown tool '{name}'.", "unknown_tool", {"tool": name})
    principal.require_scope(ApiToken.Scope.TOOLS_CALL)
    policy = _tool_policy_load(spec) if fresh else tool_policy_get(spec=spec)
    if not policy.enabled:
        raise ApplicationError(
            f"Tool '{name}' is disabled by its policy.", "tool_disabled", {"tool": name}
        )
    return spec, policy


def tool_invocation_start(*, invocation: ToolInvocation) -> ToolInvocation:
    """Saves a prepared ``running`` invocation before a long (async) run on the MCP edge.

    The run holds a lease in this process's name (:class:`EdgeLeases`), renewed while the
    invocation object lives: a run whose process dies, or whose coroutine was dropped
    unfinished, lets it lapse, and the recovery pass ends it ``failed`` (``worker_lost``).
    It is never run again: the stream it answered is gone (its ``attempts`` stay 0, which
    counts approved runs only).
    """
    invocation.lease_owner = EDGE_LEASES.owner()
    invocation.lease_expires_at = _lease_until()
    invocation.save(force_insert=True)
    EDGE_LEASES.add(invocation)
    return invocation


def tool_invoke_refuse(*, error: ApplicationError, **call) -> None:
    """Records a call refused before it could be parsed (say, a malformed body), then raises
    ``error``. Takes the same keyword arguments as :func:`tool_invoke`."""
    call.pop("reason", None)
    call.pop("client_name", None)
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
        **{**record, "arguments": storable_copy(record["arguments"])},
        status=Status.REFUSED,
        error=storable_copy(error.as_dict()),
        finished_at=timezone.now(),
    )


def _invocation_record(
    *,
    name: str,
    arguments: Any,
    principal: Principal,
    via: str,
    mcp_session_id: str = "",
    mcp_protocol_version: str = "",
    request_id: str = "",
    correlation_id: str = "",
) -> dict[str, Any]:
    return {
        "tool_name": storable_text(str(name))[:100],
        "arguments": arguments,
        "principal": principal.user,
        "principal_label": principal.label[:255],
        "token": principal.token,
        "oauth_client": principal.oauth_application,
        "via": via,
        "mcp_session_id": mcp_session_id,
        "mcp_protocol_version": mcp_protocol_version[:16],
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
    note: str = "",
) -> ToolInvocation:
    """Runs a ``running`` invocation's tool and records the outcome (with ``note`` added to
    the result's text content when given).

    The tool's writes and the audit row commit in one transaction: a process that dies
    mid-run leaves neither. The tool runs in a savepoint, so one that fails half way leaves
    nothing behind but the ``failed`` record. An ``async def`` tool runs on the event loop
    with an AsyncToolContext that can notify but not ask the client.
    """
    started = time.perf_counter()
    if not spec.writes:
        # A tool that declares it writes nothing has nothing to roll back: its audit row
        # needs no transaction (and may be written later, grouped: see the finish).
        try:
            result = _call(spec, args, principal, invocation, notify, note)
        except Exception as exc:
            result = tool_error_result(spec, exc)
        return tool_invocation_finish(
            invocation=invocation, result=result, duration=time.perf_counter() - started
        )
    with transaction.atomic():
        try:
            with transaction.atomic():
                result = _call(spec, args, principal, invocation, notify, note)
        except Exception as exc:
            result = tool_error_result(spec, exc)
        return tool_invocation_finish(
            invocation=invocation, result=result, duration=time.perf_counter() - started
        )


def _call(spec: ToolSpec, args, principal, invocation, notify, note="") -> ToolResult:
    if spec.is_async:
        context = AsyncToolContext(principal=principal, invocation=invocation)
        result = spec.to_result(async_to_sync(spec.func)(args, context))
    else:
        context = ToolContext(principal=principal, invocation=invocation, notify=notify)
        result = spec.to_result(spec.func(args, context))
    if note:
        result.content = [*result.content, {"type": "text", "text": note}]
    return result


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
    """Records the outcome of a run: ``failed`` for an ``isError`` result, else ``succeeded``.

    A result no database can store (a tool that returned NaN, say) is recorded, and
    answered, as the tool's failure (``tool_failed``), so the audit row is written.
    """
    data = result.as_dict()
    try:
        storable_check(data, what="tool's result")
    except ApplicationError as exc:
        logger.error("tool %s returned a result no database can store", invocation.tool_name)
        result = ToolResult.text(exc.message)
        result.is_error = True
        result.error = {"code": "tool_failed", "message": exc.message, "details": exc.details}
        data = result.as_dict()
    error = result.error
    if result.is_error and error is None:
        message = _first_text(result) or "The tool reported an error."
        error = {"code": "tool_failed", "message": message}
    invocation.status = Status.FAILED if result.is_error else Status.SUCCEEDED
    invocation.result = data
    invocation.error = error
    invocation.finished_at = timezone.now()
    invocation.duration_ms = round(duration * 1000, 3)
    if invocation._state.adding:
        # The audit row of every call, with SQL built once; outside a transaction, in a
        # job of mcp_transport's Batcher, written with the batch's others in one INSERT.
        insert_later(invocation)
    elif invocation.lease_owner:
        _finish_leased(invocation)
    else:
        invocation.save(update_fields=["status", "result", "error", "finished_at", "duration_ms"])
    return invocation


class LeaseLost(Exception):
    """A run's lease was taken (its worker was thought lost) or the call ended meanwhile
    (cancelled): the run records nothing, and its transaction, if any, is rolled back."""


def _finish_leased(invocation: ToolInvocation) -> None:
    """Records a leased run's outcome only while the run still holds the lease.

    An approved run that lost it raises LeaseLost. An edge run (attempts 0) that lost it
    (the recovery pass ended it, or the client cancelled it) is given what was recorded,
    for its caller to answer.
    """
    EDGE_LEASES.discard(invocation)
    updated = ToolInvocation.objects.filter(
        pk=invocation.pk, status=Status.RUNNING, lease_owner=invocation.lease_owner
    ).update(
        status=invocation.status,
        result=invocation.result,
        error=invocation.error,
        finished_at=invocation.finished_at,
        duration_ms=invocation.duration_ms,
        lease_expires_at=None,
    )
    if updated:
        invocation.lease_expires_at = None
    elif invocation.attempts == 0:
        invocation.refresh_from_db()
    else:
        raise LeaseLost(invocation.pk)


def tool_invocation_cancel(*, invocation: ToolInvocation, reason: str = "") -> bool:
    """Marks a running or waiting invocation ``cancelled``; False if it had already ended."""
    updated = ToolInvocation.objects.filter(
        pk=invocation.pk, status__in=[Status.RUNNING, Status.AWAITING_APPROVAL]
    ).update(
        status=Status.CANCELLED,
        error={"code": "cancelled", "message": reason or "Cancelled by the client."},
        finished_at=timezone.now(),
    )
    EDGE_LEASES.discard(invocation)
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


# An approved call whose worker was lost runs once more at most, and only a retry-safe tool's.
MAX_RUN_ATTEMPTS = 2
WORKER_LOST = "The call did not finish: the worker running it was lost."


def lease_owner_name() -> str:
    """A name for one run, unique across hosts, processes and runs."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def _lease_until():
    return timezone.now() + timedelta(seconds=settings.QMCP_RUN_LEASE_SECONDS)


def tool_invocation_claim(*, invocation_id, owner: str, lease: str = "") -> bool:
    """Gives ``owner`` the run of an approved call, exactly once per attempt.

    Without ``lease``, moves the call from ``awaiting_approval`` to ``running``; with it,
    takes over the lease a recovery pass gave a retry. A conditional UPDATE: of two workers
    or reviewers racing, one wins and the other gets False. The winner holds a lease until
    ``QMCP_RUN_LEASE_SECONDS`` from now and the call's ``attempts`` counts one more run.
    """
    if lease:
        claimable = ToolInvocation.objects.filter(
            pk=invocation_id, status=Status.RUNNING, lease_owner=lease
        )
    else:
        claimable = ToolInvocation.objects.filter(pk=invocation_id, status=Status.AWAITING_APPROVAL)
    return bool(
        claimable.update(
            status=Status.RUNNING,
            started_at=timezone.now(),
            attempts=F("attempts") + 1,
            lease_owner=owner,
            lease_expires_at=_lease_until(),
        )
    )


def tool_invocation_lease(*, invocation_id, owner: str) -> bool:
    """Gives ``owner`` the run of a ``running`` call that no run holds (an async call that
    goes on as a task, run again after it had stopped for its client's input).

    A conditional UPDATE, as :func:`tool_invocation_claim`: False when the call ended
    (cancelled, say) or another run holds it. The lease lapses unless renewed
    (:func:`tool_invocation_renew`); a lapsed one is settled by
    :func:`tool_invocations_recover`.
    """
    return bool(
        ToolInvocation.objects.filter(
            pk=invocation_id, status=Status.RUNNING, lease_owner=""
        ).update(attempts=F("attempts") + 1, lease_owner=owner, lease_expires_at=_lease_until())
    )


def tool_invocation_renew(*, invocation_id, owner: str) -> bool:
    """Extends ``owner``'s lease on a running call; False once the call is no longer its run's
    (it ended, was cancelled, or its lease was taken)."""
    return bool(
        ToolInvocation.objects.filter(
            pk=invocation_id, status=Status.RUNNING, lease_owner=owner
        ).update(lease_expires_at=_lease_until())
    )


def tool_invocation_release(*, invocation_id, owner: str) -> bool:
    """Gives up ``owner``'s lease on a call that stays ``running`` with no run (it waits for
    its client's input): nothing recovers it meanwhile. False if the lease was not its."""
    return bool(
        ToolInvocation.objects.filter(
            pk=invocation_id, status=Status.RUNNING, lease_owner=owner
        ).update(lease_owner="", lease_expires_at=None)
    )


def tool_invocation_finish_leased(
    *, invocation: ToolInvocation, result: ToolResult, duration: float
) -> ToolInvocation | None:
    """Records the outcome of a leased run (``invocation.lease_owner``) and tells whoever
    waits for it; None, recording nothing, when the run had lost its lease meanwhile (the
    call was cancelled, say)."""
    try:
        with transaction.atomic():
            finished = tool_invocation_finish(
                invocation=invocation, result=result, duration=duration
            )
    except LeaseLost:
        return None
    _announce_finished(invocation.pk)
    return finished


class EdgeLeases:
    """The leases of the async tool runs that this process's MCP edge runs on its event
    loop (:func:`tool_invocation_start`): one owner name per process, renewed for every
    live run by one UPDATE every third of the lease, from one daemon thread that runs while
    any run does.

    A run is held by a weak reference to its invocation object: a run that ends through
    :func:`tool_invocation_finish` or :func:`tool_invocation_cancel` is dropped at once, and
    one whose coroutine was dropped unfinished stops being renewed once the object is
    collected, so it lapses like the run of a dead process.
    """

    RENEW_BATCH = 500  # ids per UPDATE

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: weakref.WeakSet[ToolInvocation] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._owner, self._pid = "", 0

    def owner(self) -> str:
        """This process's lease owner; a forked child names itself anew."""
        with self._lock:
            if self._pid != os.getpid():
                self._owner, self._pid = lease_owner_name(), os.getpid()
                self._runs, self._thread = weakref.WeakSet(), None
            return self._owner

    def add(self, invocation: ToolInvocation) -> None:
        with self._lock:
            self._runs.add(invocation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, daemon=True, name="edge-lease")
                self._thread.start()

    def discard(self, invocation: ToolInvocation) -> None:
        with self._lock:
            self._runs.discard(invocation)

    def _renew(self) -> None:
        while True:
            time.sleep(settings.QMCP_RUN_LEASE_SECONDS / 3)
            with self._lock:
                ids, owner = [run.pk for run in self._runs], self._owner
                if not ids:
                    self._thread = None
                    return
            try:
                for start in range(0, len(ids), self.RENEW_BATCH):
                    ToolInvocation.objects.filter(
                        pk__in=ids[start : start + self.RENEW_BATCH],
                        status=Status.RUNNING,
                        lease_owner=owner,
                    ).update(lease_expires_at=_lease_until())
            except Exception:  # say, SQLite busy: the next round renews them
                logger.warning("could not renew the leases of %d MCP runs", len(ids), exc_info=True)
            finally:
                connection.close()  # one short connection per round holds nothing between


EDGE_LEASES = EdgeLeases()


def tool_invocation_rebind(*, invocation_id, arguments: dict[str, Any], digest: str) -> bool:
    """Replaces a waiting call's arguments with those a reviewer approved (already validated
    by the tool's input model) and binds its approval to their ``digest``
    (``tools.binding.arguments_digest``); False if the call was no longer waiting."""
    return bool(
        ToolInvocation.objects.filter(pk=invocation_id, status=Status.AWAITING_APPROVAL).update(
            arguments=arguments, arguments_digest=digest
        )
    )


class _LeaseKeeper:
    """Renews a run's lease every third of its length, from its own thread and database
    connection, while the tool runs; stops once the lease is no longer the run's."""

    def __init__(self, invocation_id, owner: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, args=(invocation_id, owner), daemon=True, name="run-lease"
        )

    def __enter__(self) -> "_LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        # Not joined: on SQLite a renewal may be waiting for the run's own write lock.
        self._stop.set()

    def _renew(self, invocation_id, owner: str) -> None:
        try:
            while not self._stop.wait(settings.QMCP_RUN_LEASE_SECONDS / 3):
                try:
                    renewed = tool_invocation_renew(invocation_id=invocation_id, owner=owner)
                except Exception:  # say, SQLite busy with the run's own write: try again
                    logger.warning("could not renew the lease of %s", invocation_id, exc_info=True)
                    continue
                if not renewed:
                    return
        finally:
            connection.close()


def _approved_caller(invocation: ToolInvocation) -> Principal:
    """The caller of an approved call as they are now (see :func:`caller_check`)."""
    return caller_check(
        user=invocation.principal,
        token_id=invocation.token_id,
        token=invocation.token,
        oauth_client_id=invocation.oauth_client_id,
    )


def approved_call_check(
    *, invocation: ToolInvocation, principal: Principal
) -> tuple[ToolSpec, Any]:
    """The checks an approved call passes again before each run (its first, a retry, one
    queued by the recovery pass); returns the tool and the arguments to run it with.

    Raises what :func:`tool_call_check` raises (the policy read from the database, so a
    tool disabled since the approval is refused), ``invalid_arguments``,
    ``arguments_changed`` when the arguments it would run with no longer have the digest
    its approval was bound to (``tools.binding``; a call gated before digests were kept
    has none, and runs with its stored arguments), and ``denied_by_rule`` when the gate,
    with the rules read from the database and the caller and MCP client of the call, now
    denies it.

    A rule that now merely requires approval does not gate the call again: it was approved
    under the rules of its time, by the reviewers they named. Only what forbids the call
    outright since then (a disabled tool, a rule that denies) wins over that approval.
    """
    spec, policy = tool_call_check(name=invocation.tool_name, principal=principal, fresh=True)
    args = spec.parse_arguments(invocation.arguments)
    facts = CallFacts(spec, policy, args, principal, client=invocation.client_name, fresh=True)
    if invocation.arguments_digest and facts.digest != invocation.arguments_digest:
        raise ApplicationError(
            "its arguments are not the ones that were approved.",
            "arguments_changed",
            {"tool": spec.name},
        )
    decision = TOOL_GATE.decide(facts)
    if decision.outcome == "deny":
        raise ApplicationError(
            decision.message, "denied_by_rule", {"tool": spec.name, "rule": decision.rule}
        )
    return spec, args


def tool_invocation_run_approved(*, invocation_id, lease: str = "") -> ToolInvocation | None:
    """Runs an approved call as its caller: once per attempt, never twice at once.

    The run holds a lease on the call (see :func:`tool_invocation_claim`), renewed while the
    tool runs, and records its outcome only while it still holds it: a run whose lease was
    taken records nothing and its writes are rolled back. The caller, the tool, the
    arguments' digest and the rules are checked again first (:func:`approved_call_check`,
    the token and the user): a call that may no longer run ends ``failed`` with the reason
    (its code in ``error``), unrun. The notes the receivers of
    ``approved_run_notes`` return (say, that a reviewer changed the arguments), read from
    stored state on every attempt, are added to the result's text, so the agent reads them
    after a retry too. Returns None when this delivery had nothing to run (another run
    holds the call, or it has ended).
    """
    owner = lease_owner_name()
    if not tool_invocation_claim(invocation_id=invocation_id, owner=owner, lease=lease):
        # Perhaps a message redelivered after its worker died: a lapsed run is recovered now.
        tool_invocations_recover(invocation_id=invocation_id)
        return None
    invocation = ToolInvocation.objects.select_related("principal", "token__user").get(
        pk=invocation_id
    )
    try:
        try:
            principal = _approved_caller(invocation)
            spec, args = approved_call_check(invocation=invocation, principal=principal)
        except ApplicationError as exc:
            logger.warning("approved call %s not run: %s", invocation_id, exc.message)
            result = ToolResult.text(f"The approved call was not run: {exc.message}")
            result.is_error = True
            result.error = {**exc.as_dict(), "message": result.content[0]["text"]}
            with transaction.atomic():
                finished = tool_invocation_finish(invocation=invocation, result=result, duration=0)
        else:
            with _LeaseKeeper(invocation.pk, owner):
                finished = tool_invocation_execute(
                    invocation=invocation,
                    spec=spec,
                    args=args,
                    principal=principal,
                    note=_approved_run_note(invocation),
                )
    except LeaseLost:
        logger.warning("invocation %s: the run lost its lease; nothing recorded", invocation_id)
        return None
    _announce_finished(invocation.pk)  # committed already: sent at once
    return finished


def _approved_run_note(invocation: ToolInvocation) -> str:
    responses = approved_run_notes.send(sender=ToolInvocation, invocation=invocation)
    return "\n".join(note for _, note in responses if note)


def tool_invocations_recover(*, invocation_id=None) -> dict[str, int]:
    """Settles every approved call whose run lost its worker (its lease lapsed).

    An approved call of a retry-safe tool that has run fewer than MAX_RUN_ATTEMPTS times
    gets a new lease and a queued run (:func:`tool_invocation_run_approved` with that
    lease), so it runs exactly once more; any other (an MCP edge's async run among them,
    see :func:`tool_invocation_start`) ends ``failed`` (``worker_lost``, "the worker running
    it was lost") and whoever waits for it is told. Each call is taken with a conditional
    UPDATE on the lapsed lease, so of two passes (beat, ``manage.py recover_runs``, a
    redelivered task) one acts. Returns how many were retried and how many failed.
    """
    now = timezone.now()
    lapsed = ToolInvocation.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now)
    if invocation_id is not None:
        lapsed = lapsed.filter(pk=invocation_id)
    counts = {"retried": 0, "failed": 0}
    rows = lapsed.values_list("pk", "tool_name", "lease_owner", "attempts")
    for pk, tool_name, owner, attempts in rows:
        taken = ToolInvocation.objects.filter(
            pk=pk, status=Status.RUNNING, lease_owner=owner, lease_expires_at__lt=now
        )
        spec = get_tool(tool_name)
        # Only an approved sync call is run again: an async run answered a client now gone.
        if (
            spec is not None
            and spec.retry_safe
            and not spec.is_async
            and 0 < attempts < MAX_RUN_ATTEMPTS
        ):
            lease = lease_owner_name()
            if taken.update(lease_owner=lease, lease_expires_at=_lease_until()):
                logger.warning("invocation %s lost its worker; running it again", pk)
                _queue_run(pk, lease)
                counts["retried"] += 1
            continue
        result = ToolResult.text(WORKER_LOST)
        result.is_error = True
        ended = taken.update(
            status=Status.FAILED,
            result=result.as_dict(),
            error={
                "code": "worker_lost",
                "message": WORKER_LOST,
                "details": {"attempts": attempts},
            },
            finished_at=now,
            lease_expires_at=None,
        )
        if ended:
            logger.warning("invocation %s lost its worker; ended failed", pk)
            _announce_finished(pk)
            counts["failed"] += 1
    return counts


def _queue_run(invocation_id, lease: str) -> None:
    from tools.tasks import tool_invocation_run as tool_invocation_run_task

    invocation_id = str(invocation_id)
    transaction.on_commit(lambda: tool_invocation_run_task.delay(invocation_id, lease=lease))


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
