"""Human requests: create, respond (approve, reject, answer), hand to a colleague,
escalate, cancel and expire. Who may decide and how approvals are counted are
``hitl.rules``'s (:func:`~hitl.rules.decider_check`, :func:`~hitl.rules.approvals_count`).

A decision on a gated tool call is carried out through tools' services: approval queues
the run (a Celery task, after commit), rejection and expiry end the call with the reason.
"""

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from hitl.grants import GrantTerms, grant_check, grant_create
from hitl.models import (
    HumanRequest,
    HumanRequestDelegation,
    HumanRequestEvent,
    HumanResponse,
    validate_options,
)
from hitl.rules import (
    RESPOND_PERMISSION,
    approvals_count,
    decider_check,
    reviewer_refusal,
    reviewers,
)
from hitl.signals import human_request_changed
from qmcp_site.errors import ApplicationError
from qmcp_site.storable import storable_check
from tools.binding import arguments_digest
from tools.gate import GateDecision
from tools.models import (
    APPROVAL_TIMEOUT_MAX,
    APPROVAL_TIMEOUT_MIN,
    APPROVALS_MAX,
    ToolInvocation,
)
from tools.registry import get_tool
from tools.services import (
    in_one_event_loop,
    tool_invocation_end,
    tool_invocation_rebind,
    tool_invocations_end,
)
from users.models import User

Status = HumanRequest.Status
Decision = HumanResponse.Decision
Event = HumanRequestEvent.Kind
# The admin's approval queue opens to staff with any of these (HumanRequestAdmin).
QUEUE_PERMISSIONS = ("hitl.view_humanrequest", "hitl.change_humanrequest", RESPOND_PERMISSION)

# The longest a request may stay open, counted from its creation, extensions included.
MAX_LIFETIME_SECONDS = 30 * 86400


def _trail(request: HumanRequest, kind: str, actor: User | None = None, **detail) -> None:
    HumanRequestEvent.objects.create(request=request, kind=kind, actor=actor, detail=detail)


def _announce(request: HumanRequest, event: str, **extra) -> None:
    """Sends ``human_request_changed`` after the commit; ``extra`` goes with it (for
    example ``user_ids``: the only reviewers to notify)."""
    request_id = request.pk
    transaction.on_commit(
        lambda: human_request_changed.send(
            sender=HumanRequest, request_id=request_id, event=event, **extra
        )
    )


def _announce_many(request_ids: list, event: str) -> None:
    """:func:`_announce` for many requests, with one callback after the commit."""

    def send():
        for request_id in request_ids:
            human_request_changed.send(sender=HumanRequest, request_id=request_id, event=event)

    transaction.on_commit(lambda: in_one_event_loop(send))


def human_request_create(
    *,
    title: str,
    kind: str = HumanRequest.Kind.APPROVAL,
    prompt: str = "",
    context: dict[str, Any] | None = None,
    options: list[str] | None = None,
    created_by: User | None = None,
    timeout_seconds: int = 3600,
    approvals_required: int = 1,
    approver_group: Group | None = None,
    invocation: ToolInvocation | None = None,
    risk_level: str = HumanRequest.Risk.MEDIUM,
    reason: str = "",
    preview: dict[str, Any] | None = None,
    escalate_after_seconds: int | None = None,
    escalation_group: Group | None = None,
) -> HumanRequest:
    """A pending request that expires after ``timeout_seconds``, with its trail's first line;
    ``unstorable_value`` for a title, prompt, context or option that a database or a
    reviewer's page cannot hold. With ``escalate_after_seconds`` and ``escalation_group``,
    it is escalated to that group if still pending then (:func:`human_requests_escalate`)."""
    storable_check(
        {"title": title, "prompt": prompt, "context": context, "options": options},
        what="request",
    )
    if kind not in HumanRequest.Kind.values:
        raise ApplicationError(
            f"Unknown kind '{kind}'.", "invalid", {"allowed": HumanRequest.Kind.values}
        )
    if not isinstance(title, str) or not title.strip():
        raise ApplicationError("A request needs a title.", "invalid")
    if not APPROVAL_TIMEOUT_MIN <= timeout_seconds <= APPROVAL_TIMEOUT_MAX:
        raise ApplicationError("The timeout must be between 10 seconds and 30 days.", "invalid")
    if not 1 <= approvals_required <= APPROVALS_MAX:
        raise ApplicationError(
            f"Between 1 and {APPROVALS_MAX} approvals may be required.",
            "invalid",
            {"approvals_required": approvals_required},
        )
    if risk_level not in HumanRequest.Risk.values:
        raise ApplicationError(
            f"Unknown risk level '{risk_level}'.", "invalid", {"allowed": HumanRequest.Risk.values}
        )
    now = timezone.now()
    escalates = escalation_group is not None and escalate_after_seconds is not None
    request = HumanRequest(
        kind=kind,
        title=title.strip()[:200],
        prompt=prompt,
        context=context or {},
        options=options,
        created_by=created_by,
        approvals_required=approvals_required,
        approver_group=approver_group,
        invocation=invocation,
        expires_at=now + timedelta(seconds=timeout_seconds),
        risk_level=risk_level,
        reason=reason,
        preview=preview,
        escalation_group=escalation_group if escalates else None,
        escalate_at=now + timedelta(seconds=escalate_after_seconds) if escalates else None,
    )
    _full_clean(request)
    request.save(force_insert=True)
    _trail(request, Event.CREATED, created_by)
    _announce(request, "created")
    return request


def _full_clean(request: HumanRequest) -> None:
    """Every bound of the model (lengths, ranges, options) checked before a write, so no
    database stores a value silently cut or wrapped; the links are checked by the database."""
    try:
        # Run by hand as well: full_clean skips the validators of a blank value such as [].
        validate_options(request.options)
        request.full_clean(
            exclude=["created_by", "approver_group", "invocation"], validate_unique=False
        )
    except ValidationError as exc:
        if not hasattr(exc, "error_dict"):
            exc = ValidationError({"options": exc.messages})
        errors = exc.message_dict
        first = next(iter(errors.values()))[0]
        raise ApplicationError(f"Invalid human request: {first}", "invalid", errors) from exc


def human_request_for_invocation(
    *,
    invocation: ToolInvocation,
    decision: GateDecision,
    preview: dict | None = None,
    reason: str = "",
) -> HumanRequest:
    """The approval request that gates ``invocation``, with the parameters of the gate's
    ``decision`` (the matching rule's, or the tool's policy's), the tool's ``preview`` and
    the agent's ``reason``."""
    if preview and preview.get("summary"):
        summary = preview["summary"]
    else:
        summary = json.dumps(invocation.arguments, ensure_ascii=False, sort_keys=True)
    summary = summary if len(summary) <= 80 else summary[:77] + "..."
    return human_request_create(
        title=f"Approve {invocation.tool_name}: {summary}",
        prompt=(
            f"{invocation.principal_label or 'A caller'} wants to call "
            f"'{invocation.tool_name}' through {invocation.get_via_display()}."
        ),
        context={
            "tool": invocation.tool_name,
            "arguments": invocation.arguments,
            "caller": invocation.principal_label,
            "via": invocation.via,
        },
        created_by=invocation.principal,
        timeout_seconds=decision.approval_timeout_seconds,
        approvals_required=decision.approvals_required,
        approver_group=decision.approver_group,
        invocation=invocation,
        risk_level=decision.risk_level,
        reason=reason,
        preview=preview,
        escalate_after_seconds=decision.escalate_after_seconds,
        escalation_group=decision.escalation_group,
    )


def human_request_reads_all(*, user) -> bool:
    """Whether ``user`` may read every request (the queue, each request with the call it
    gates, its result included): exactly those the admin's queue lets in, active staff
    with the view, change or respond permission on HumanRequest."""
    return (
        user.is_authenticated
        and user.is_active
        and user.is_staff
        and any(user.has_perm(perm) for perm in QUEUE_PERMISSIONS)
    )


def human_request_respond(
    *,
    request_id,
    responder: User,
    decision: str,
    option: str = "",
    answer: str = "",
    comment: str = "",
    arguments: dict[str, Any] | None = None,
    grant: GrantTerms | None = None,
) -> HumanRequest:
    """Records one reviewer's response and settles the request when it is decided.

    ``arguments``, with an approval of a gated call, approves it with edits: they are
    validated by the tool's input model, and the call runs with them (the original
    arguments stay in the request's context, the edit in its trail). A critical request
    needs a comment to be approved. ``grant``, with an approval, also lets the call's
    caller run the tool for some hours without asking (``hitl.grants``; ``invalid`` when
    this request may not have one, and then nothing is recorded); it binds the approved
    arguments, the edited ones included.

    Runs with the request row locked (SELECT FOR UPDATE, and SQLite's single writer), so
    of two reviewers deciding at once one wins and the other gets ``conflict``. An
    approval request needs ``approvals_required`` approvals from distinct reviewers; one
    rejection rejects it. A question is answered by its first answer, which must be one of
    its options when it has options.
    """
    storable_check({"option": option, "answer": answer, "comment": comment}, what="response")
    with transaction.atomic():
        request = _locked(request_id)
        if request.is_overdue:
            _expire(request)  # committed: the refusal below is raised after this block
        elif request.is_pending:
            _respond(request, responder, decision, option, answer, comment, arguments, grant)
            return request
    raise ApplicationError(
        closed_message(request), "conflict", {"status": request.status, "outcome": request.outcome}
    )


def _respond(
    request, responder, decision, option, answer, comment, arguments=None, grant=None
) -> None:
    """Records a response and settles the request; the caller holds the request's lock."""
    decider_check(user=responder, request=request)
    option, answer = _validate_response(request, decision, option, answer)
    if grant is not None:
        if decision != Decision.APPROVE:
            raise ApplicationError("Only an approval can come with a grant.", "invalid")
        grant_check(request=request, terms=grant)
    if (
        decision == Decision.APPROVE
        and request.risk_level == HumanRequest.Risk.CRITICAL
        and not comment.strip()
    ):
        raise ApplicationError("This request is critical: type a comment to approve it.", "invalid")
    if arguments is not None and decision == Decision.APPROVE:
        _edit_arguments(request, responder, arguments)
    try:
        with transaction.atomic():
            HumanResponse.objects.create(
                request=request,
                responder=responder,
                decision=decision,
                option=option,
                answer=answer,
                comment=comment,
            )
    except IntegrityError as exc:
        raise ApplicationError("You have already responded to this request.", "conflict") from exc
    _settle(request, decision, answer or option, comment, responder)
    if grant is not None and request.outcome == HumanRequest.Outcome.APPROVED:
        grant_create(
            request=request, granted_by=responder, terms=grant, digest=approved_digest(request)
        )


def arguments_diff(before: dict | None, after: dict | None) -> list[dict[str, Any]]:
    """The fields that differ between two argument objects, as ``{field, before, after}``
    (a missing field is None)."""
    before, after = before or {}, after or {}
    return [
        {"field": key, "before": before.get(key), "after": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def _edit_arguments(request: HumanRequest, responder: User, arguments: Any) -> None:
    """Validates a reviewer's edited arguments and keeps them on the request, with a trail
    line holding the diff; the caller holds the request's lock."""
    if request.invocation_id is None:
        raise ApplicationError("Only a gated tool call has arguments to edit.", "invalid")
    spec = get_tool(request.invocation.tool_name)
    if spec is None:
        raise ApplicationError(f"Tool '{request.invocation.tool_name}' no longer exists.")
    edited = spec.parse_arguments(arguments).model_dump(mode="json", exclude_unset=True)
    current = request.edited_arguments or request.context.get("arguments")
    if edited == current:
        return
    others = request.responses.filter(decision=Decision.APPROVE).exclude(responder=responder)
    if others.exists():
        raise ApplicationError(
            "Other reviewers approved these arguments already: reject the call instead, "
            "so the agent asks again.",
            "conflict",
        )
    original = request.context.get("arguments")
    request.edited_arguments = edited
    request.edited_by = responder
    request.save(update_fields=["edited_arguments", "edited_by"])
    _trail(
        request,
        Event.EDITED,
        responder,
        original=original,
        edited=edited,
        diff=arguments_diff(original, edited),
    )


def approved_digest(request: HumanRequest) -> str:
    """The digest (``tools.binding``) an approval of ``request``'s call binds: that of the
    arguments a reviewer edited the call to, else the one the call was gated with."""
    invocation = request.invocation
    if request.edited_arguments is None and invocation.arguments_digest:
        return invocation.arguments_digest
    edited = request.edited_arguments
    arguments = invocation.arguments if edited is None else edited
    spec = get_tool(invocation.tool_name)
    if spec is not None:
        arguments = spec.parse_arguments(arguments).model_dump(mode="json")
    return arguments_digest(invocation.tool_name, arguments)


def edit_note(*, invocation_id) -> str:
    """What the agent is told when a reviewer changed its approved call's arguments, read
    from the stored request on every run of the call; "" when nobody changed them."""
    request = (
        HumanRequest.objects.filter(
            invocation_id=invocation_id,
            outcome=HumanRequest.Outcome.APPROVED,
            edited_arguments__isnull=False,
        )
        .select_related("edited_by")
        .first()
    )
    if request is None:
        return ""
    editor = request.edited_by.email if request.edited_by else "a reviewer"
    return f"A reviewer ({editor}) changed the arguments before approving."


def closed_message(request: HumanRequest) -> str:
    """Why a request takes no more responses, in words a reviewer reads."""
    if request.status == Status.RESPONDED:
        return f"This request was already {request.outcome or 'decided'}."
    if request.status == Status.EXPIRED:
        return "This request has expired."
    return "This request was withdrawn by the caller: the call was cancelled and will not run."


def _locked(request_id) -> HumanRequest:
    """The request, its row locked until the caller's transaction ends (the caller runs
    inside ``transaction.atomic``); ``not_found`` for a malformed or unknown id."""
    pk = _request_pk(request_id)
    request = HumanRequest.objects.select_for_update().filter(pk=pk).first()
    if request is None:
        raise ApplicationError(f"No human request '{pk}'.", "not_found")
    return request


def _request_pk(request_id) -> uuid.UUID:
    try:
        return uuid.UUID(str(request_id))
    except ValueError as exc:
        raise ApplicationError(f"No human request '{request_id}'.", "not_found") from exc


def _validate_response(request: HumanRequest, decision: str, option: str, answer: str):
    if request.kind == HumanRequest.Kind.APPROVAL:
        if decision not in (Decision.APPROVE, Decision.REJECT):
            raise ApplicationError("An approval request takes 'approve' or 'reject'.", "invalid")
        return "", ""
    if decision != Decision.ANSWER:
        raise ApplicationError("A question takes an 'answer'.", "invalid")
    if request.options:
        choice = option or answer
        if choice not in request.options:
            raise ApplicationError(
                f"'{choice}' is not one of the options.", "invalid", {"options": request.options}
            )
        return choice, choice
    if not answer.strip():
        raise ApplicationError("An answer cannot be empty.", "invalid")
    return "", answer


def _settle(
    request: HumanRequest, decision: str, answer: str, comment: str, responder: User
) -> None:
    """Decides ``request`` when this response is enough; the caller holds its lock."""
    now = timezone.now()
    if decision == Decision.APPROVE:
        if approvals_count(request) < request.approvals_required:
            _announce(request, "responded")
            return
        request.outcome = HumanRequest.Outcome.APPROVED
    elif decision == Decision.REJECT:
        request.outcome = HumanRequest.Outcome.REJECTED
    else:
        request.outcome = HumanRequest.Outcome.ANSWERED
        request.answer = answer
    request.status = Status.RESPONDED
    request.decided_at = now
    request.save(update_fields=["status", "outcome", "answer", "decided_at"])
    _trail(request, Event.DECIDED, responder, outcome=request.outcome)
    if request.invocation_id is not None:
        if request.outcome == HumanRequest.Outcome.APPROVED:
            from tools.tasks import tool_invocation_run as tool_invocation_run_task

            invocation_id = str(request.invocation_id)
            if request.edited_arguments is not None:
                tool_invocation_rebind(
                    invocation_id=invocation_id,
                    arguments=request.edited_arguments,
                    digest=approved_digest(request),
                )
            transaction.on_commit(lambda: tool_invocation_run_task.delay(invocation_id))
        elif request.outcome == HumanRequest.Outcome.REJECTED:
            reason = f"Rejected by a reviewer: {comment}" if comment else "Rejected by a reviewer."
            tool_invocation_end(
                invocation_id=request.invocation_id,
                status=ToolInvocation.Status.REJECTED,
                message=reason,
                code="rejected",
            )
    _announce(request, "decided")


def _close(request: HumanRequest, status: str, message: str) -> None:
    """Ends a pending request without a decision (expired or cancelled), and its call."""
    request.status = status
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])
    _trail(request, status, None, message=message)
    if request.invocation_id is not None:
        tool_invocation_end(
            invocation_id=request.invocation_id, status=status, message=message, code=status
        )
    _announce(request, status)


EXPIRED_MESSAGE = "No reviewer decided in time; the call was not run."


def _expire(request: HumanRequest) -> None:
    _close(request, Status.EXPIRED, EXPIRED_MESSAGE)


# Overdue requests are expired this many per transaction (and per IN list).
EXPIRE_BATCH = 500


def human_requests_expire(*, request_id=None) -> int:
    """Expires every pending request past its time (or only ``request_id``); returns how
    many. A batch costs one locking SELECT, one UPDATE of the requests and one of the calls
    they gate, and is announced after its commit; none overdue costs one indexed SELECT and
    no write.

    The overdue rows are locked (SELECT FOR UPDATE; SQLite's single writer) before the
    UPDATE, so a reviewer deciding one at the same moment either decides first, and it is
    no longer overdue-and-pending here, or finds it expired.
    """
    count = 0
    while True:
        now = timezone.now()
        overdue = HumanRequest.objects.filter(status=Status.PENDING, expires_at__lte=now)
        if request_id is not None:
            overdue = overdue.filter(pk=request_id)
        if not overdue.exists():
            return count
        with transaction.atomic():
            found = dict(
                overdue.select_for_update()
                .order_by("pk")
                .values_list("pk", "invocation_id")[:EXPIRE_BATCH]
            )
            HumanRequest.objects.filter(pk__in=list(found)).update(
                status=Status.EXPIRED, decided_at=now
            )
            tool_invocations_end(
                invocation_ids=[pk for pk in found.values() if pk is not None],
                status=Status.EXPIRED,
                message=EXPIRED_MESSAGE,
                code=Status.EXPIRED,
            )
            _announce_many(list(found), Status.EXPIRED)
        count += len(found)


def human_requests_expire_soon() -> bool:
    """Has the overdue requests expired by a Celery task after the current commit (by the
    worker when a broker is set, inline when Celery is eager), so a reader does not pay
    for them; True if some were overdue. Costs one indexed SELECT when none are."""
    overdue = HumanRequest.objects.filter(status=Status.PENDING, expires_at__lte=timezone.now())
    if not overdue.exists():
        return False
    from hitl.tasks import human_requests_expire as human_requests_expire_task

    transaction.on_commit(human_requests_expire_task.delay)
    return True


def human_request_cancel(*, request_id, reason: str = "") -> HumanRequest:
    """Cancels a pending request (and the call it gates); ``conflict`` once it is settled."""
    with transaction.atomic():
        request = _locked(request_id)
        if not request.is_pending:
            raise ApplicationError(closed_message(request), "conflict")
        _close(
            request,
            Status.CANCELLED,
            reason or "The call was cancelled before a reviewer decided.",
        )
    return request


@dataclass
class BulkOutcome:
    """What one decision did to each of several requests."""

    decided: int = 0
    waiting: int = 0  # approvals recorded on requests that need more
    refused: list[tuple[HumanRequest | None, str]] = field(default_factory=list)

    def messages(self, decision: str) -> list[tuple[str, str]]:
        """``(level, text)`` lines for a reviewer: one per outcome, one per refusal."""
        verb = "Approved" if decision == Decision.APPROVE else "Rejected"
        lines = []
        if self.decided:
            lines.append(("success", f"{verb} {requests_phrase(self.decided)}."))
        if self.waiting:
            lines.append(
                (
                    "success",
                    f"Recorded your approval on {requests_phrase(self.waiting)}; "
                    "more approvals are needed.",
                )
            )
        for request, message in self.refused:
            lines.append(("error", f"“{request or 'Unknown request'}”: {message}"))
        return lines


def requests_phrase(count: int) -> str:
    """'1 request', '3 requests'."""
    return f"{count} request" if count == 1 else f"{count} requests"


def human_requests_respond(
    *,
    request_ids,
    responder: User,
    decision: str,
    comment: str = "",
    grant: GrantTerms | None = None,
) -> BulkOutcome:
    """One reviewer's decision, comment (and grant) on several requests, each through
    :func:`human_request_respond` in its own transaction: every request is checked by the
    rules on its own, and one refused leaves the others decided."""
    outcome = BulkOutcome()
    for request_id in request_ids:
        try:
            result = human_request_respond(
                request_id=request_id,
                responder=responder,
                decision=decision,
                comment=comment,
                grant=grant,
            )
        except ApplicationError as exc:
            found = HumanRequest.objects.filter(pk=_request_pk_or_none(request_id)).first()
            outcome.refused.append((found, exc.message))
            continue
        if result.is_pending:
            outcome.waiting += 1
        else:
            outcome.decided += 1
    return outcome


def _request_pk_or_none(request_id):
    try:
        return uuid.UUID(str(request_id))
    except ValueError:
        return None


def human_request_extend(*, request_id, by: User, seconds: int) -> HumanRequest:
    """Gives a pending request ``seconds`` more before it expires (from now, if it is past
    due); only a reviewer who may decide it may, and never past 30 days from creation."""
    if not 60 <= seconds <= 7 * 86400:
        raise ApplicationError("Extend by between one minute and seven days.", "invalid")
    with transaction.atomic():
        request = _locked(request_id)
        if not request.is_pending:
            raise ApplicationError(closed_message(request), "conflict")
        decider_check(user=by, request=request)
        now = timezone.now()
        latest = request.created_at + timedelta(seconds=MAX_LIFETIME_SECONDS)
        expires_at = min(max(now, request.expires_at) + timedelta(seconds=seconds), latest)
        if expires_at <= request.expires_at:
            raise ApplicationError("This request cannot be extended any further.", "conflict")
        before = request.expires_at
        request.expires_at = expires_at
        request.expiry_warned_at = None
        request.save(update_fields=["expires_at", "expiry_warned_at"])
        _trail(request, Event.EXTENDED, by, before=before.isoformat(), after=expires_at.isoformat())
        _announce(request, "extended")
    return request


def human_requests_escalate() -> int:
    """Escalates every pending request whose escalation time has come, exactly once each,
    and returns how many: its escalation group's members may now decide it too (see
    :func:`hitl.rules.decider_refusal`), its trail says "escalated to <group>", and the
    members are notified (event ``escalated``) after the commit.

    Each request is claimed by a conditional UPDATE (pending, not yet escalated): of two
    beat runs racing, or a run racing a decision that holds the row's lock, one claims it
    and the other updates no row. None due costs one indexed SELECT and no write.
    """
    now = timezone.now()
    due = HumanRequest.objects.filter(
        status=Status.PENDING,
        escalated_at=None,
        escalate_at__lte=now,
        expires_at__gt=now,
        escalation_group__isnull=False,
    )
    count = 0
    for request_id in due.order_by("escalate_at").values_list("pk", flat=True):
        with transaction.atomic():
            claimed = HumanRequest.objects.filter(
                pk=request_id, status=Status.PENDING, escalated_at=None
            ).update(escalated_at=now)
            if not claimed:
                continue
            request = HumanRequest.objects.select_related("escalation_group").get(pk=request_id)
            _trail(request, Event.ESCALATED, None, group=request.escalation_group.name)
            _announce(request, "escalated")
        count += 1
    return count


def human_request_delegate(*, request_id, by: User, to: User, comment: str = "") -> HumanRequest:
    """``by``, who may decide the pending request, hands it to the colleague ``to``: ``to``
    may then decide it (in the approver group or not) and is notified (event
    ``delegated``); ``by`` may not any more, so nobody counts twice. The trail says
    "handed to <to> by <by>".

    Refused: ``forbidden`` when ``by`` may not decide it, or ``to`` is its requester;
    ``invalid`` when ``to`` is ``by`` or not a reviewer (active staff with the respond
    permission); ``conflict`` when it is settled, or ``by`` or ``to`` has responded, or it
    was handed to or by ``to`` already. Runs with the request's row locked.
    """
    storable_check({"comment": comment}, what="delegation")
    with transaction.atomic():
        request = _locked(request_id)
        if not request.is_pending:
            raise ApplicationError(closed_message(request), "conflict")
        decider_check(user=by, request=request)
        _delegate_check(request, by, to)
        HumanRequestDelegation.objects.create(request=request, delegate=to, delegated_by=by)
        _trail(request, Event.DELEGATED, by, to=to.email, by=by.email, comment=comment)
        _announce(request, "delegated", user_ids=[to.pk])
    return request


def delegate_candidates(*, request: HumanRequest, by: User):
    """The colleagues ``by`` could hand ``request`` to: reviewers other than ``by``, its
    requester, those who responded and those it was handed to or by."""
    taken = {by.pk, request.created_by_id}
    taken |= set(request.responses.values_list("responder_id", flat=True))
    for delegate_id, by_id in request.delegations.values_list("delegate_id", "delegated_by_id"):
        taken |= {delegate_id, by_id}
    return reviewers().exclude(pk__in=[pk for pk in taken if pk is not None]).distinct()


def reviewer_by_email(*, email: str) -> User:
    """The user with ``email`` (any case), to hand a request to; ``not_found`` if none."""
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        raise ApplicationError(f"No user has the email {email!r}.", "not_found")
    return user


def _delegate_check(request: HumanRequest, by: User, to: User) -> None:
    """Why ``to`` cannot be handed ``request`` by ``by``; the caller holds the lock."""
    if to.pk == by.pk:
        raise ApplicationError("Hand the request to someone else than yourself.", "invalid")
    if request.created_by_id == to.pk:
        raise ApplicationError("Nobody may decide on their own request.", "forbidden")
    if reviewer_refusal(to) is not None:
        raise ApplicationError(
            f"{to.email} is not a reviewer: only active staff with the permission to respond "
            "to requests can be handed one.",
            "invalid",
        )
    responded = set(request.responses.values_list("responder_id", flat=True))
    if by.pk in responded:
        raise ApplicationError(
            "You have already responded: your decision counts, so it cannot be handed on.",
            "conflict",
        )
    if to.pk in responded:
        raise ApplicationError(f"{to.email} has already responded to this request.", "conflict")
    if request.delegations.filter(Q(delegate=to) | Q(delegated_by=to)).exists():
        raise ApplicationError(f"This request was already handed to or by {to.email}.", "conflict")


def human_request_viewed(*, request: HumanRequest, user: User) -> None:
    """Records that ``user`` opened the request (once per person) for its trail."""
    if not HumanRequestEvent.objects.filter(
        request=request, kind=Event.VIEWED, actor=user
    ).exists():
        _trail(request, Event.VIEWED, user)


def human_request_notified(*, request: HumanRequest, channel: str, to: list[str], event: str):
    """Records in the trail that reviewers were told of ``event`` by ``channel``."""
    _trail(request, Event.NOTIFIED, None, channel=channel, to=", ".join(to), event=event)


def human_requests_warn_expiring() -> int:
    """Tells reviewers, once per request, that a pending request expires within
    ``QMCP_NOTIFY_EXPIRY_WARNING_SECONDS``; returns how many requests it warned of."""
    from django.conf import settings

    now = timezone.now()
    soon = now + timedelta(seconds=settings.QMCP_NOTIFY_EXPIRY_WARNING_SECONDS)
    due = HumanRequest.objects.filter(
        status=Status.PENDING,
        expiry_warned_at=None,
        expires_at__gt=now,
        expires_at__lte=soon,
    )
    count = 0
    for request_id in due.values_list("pk", flat=True):
        # The conditional update claims the warning: two beat runs never both send it.
        if HumanRequest.objects.filter(pk=request_id, expiry_warned_at=None).update(
            expiry_warned_at=now
        ):
            count += 1
            transaction.on_commit(
                lambda request_id=request_id: human_request_changed.send(
                    sender=HumanRequest, request_id=request_id, event="expiring"
                )
            )
    return count
