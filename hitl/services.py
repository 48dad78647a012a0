"""Human requests: create, respond (approve, reject, answer), cancel and expire.

A decision on a gated tool call is carried out through tools' services: approval queues
the run (a Celery task, after commit), rejection and expiry end the call with the reason.
"""

import json
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from hitl.models import HumanRequest, HumanResponse, validate_options
from hitl.signals import human_request_changed
from qmcp_site.errors import ApplicationError
from tools.models import (
    APPROVAL_TIMEOUT_MAX,
    APPROVAL_TIMEOUT_MIN,
    APPROVALS_MAX,
    ToolInvocation,
)
from tools.services import in_one_event_loop, tool_invocation_end, tool_invocations_end
from users.models import User

Status = HumanRequest.Status
Decision = HumanResponse.Decision
RESPOND_PERMISSION = "hitl.respond_humanrequest"
# The admin's approval queue opens to staff with any of these (HumanRequestAdmin).
QUEUE_PERMISSIONS = ("hitl.view_humanrequest", "hitl.change_humanrequest", RESPOND_PERMISSION)


def _announce(request: HumanRequest, event: str) -> None:
    request_id = request.pk
    transaction.on_commit(
        lambda: human_request_changed.send(sender=HumanRequest, request_id=request_id, event=event)
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
) -> HumanRequest:
    """A pending request that expires after ``timeout_seconds``."""
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
        expires_at=timezone.now() + timedelta(seconds=timeout_seconds),
    )
    _full_clean(request)
    request.save(force_insert=True)
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


def human_request_for_invocation(*, invocation: ToolInvocation, policy) -> HumanRequest:
    """The approval request that gates ``invocation``, from its tool's policy."""
    arguments = json.dumps(invocation.arguments, ensure_ascii=False, sort_keys=True)
    summary = arguments if len(arguments) <= 80 else arguments[:77] + "..."
    return human_request_create(
        title=f"Approve {invocation.tool_name} {summary}",
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
        timeout_seconds=policy.approval_timeout_seconds,
        approvals_required=policy.approvals_required,
        approver_group=policy.approver_group,
        invocation=invocation,
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


def reviewer_check(*, user: User, request: HumanRequest) -> None:
    """Raises ``forbidden`` unless ``user`` may decide on ``request``.

    Reviewers are active staff with the respond permission, in the approver group when
    one is set, and never the person whose call or question it is.
    """
    if not (user.is_active and user.is_staff and user.has_perm(RESPOND_PERMISSION)):
        raise ApplicationError("Only reviewers may respond to human requests.", "forbidden")
    group = request.approver_group
    if group is not None and not user.groups.filter(pk=group.pk).exists():
        raise ApplicationError(
            f"Only members of '{group.name}' may decide this request.", "forbidden"
        )
    if request.created_by_id is not None and request.created_by_id == user.pk:
        raise ApplicationError("Nobody may decide on their own request.", "forbidden")


def human_request_respond(
    *,
    request_id,
    responder: User,
    decision: str,
    option: str = "",
    answer: str = "",
    comment: str = "",
) -> HumanRequest:
    """Records one reviewer's response and settles the request when it is decided.

    Runs with the request row locked (SELECT FOR UPDATE, and SQLite's single writer), so
    of two reviewers deciding at once one wins and the other gets ``conflict``. An
    approval request needs ``approvals_required`` approvals from distinct reviewers; one
    rejection rejects it. A question is answered by its first answer, which must be one of
    its options when it has options.
    """
    request_id = _request_pk(request_id)
    with transaction.atomic():
        request = HumanRequest.objects.select_for_update().filter(pk=request_id).first()
        if request is None:
            raise ApplicationError(f"No human request '{request_id}'.", "not_found")
        if request.is_overdue:
            _expire(request)  # committed: the refusal below is raised after this block
        elif request.is_pending:
            _respond(request, responder, decision, option, answer, comment)
            return request
    raise ApplicationError(
        closed_message(request), "conflict", {"status": request.status, "outcome": request.outcome}
    )


def _respond(request, responder, decision, option, answer, comment) -> None:
    """Records a response and settles the request; the caller holds the request's lock."""
    reviewer_check(user=responder, request=request)
    option, answer = _validate_response(request, decision, option, answer)
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
    _settle(request, decision, answer or option, comment)


def closed_message(request: HumanRequest) -> str:
    """Why a request takes no more responses, in words a reviewer reads."""
    if request.status == Status.RESPONDED:
        return f"This request was already {request.outcome or 'decided'}."
    if request.status == Status.EXPIRED:
        return "This request has expired."
    return "This request has been cancelled."


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


def _settle(request: HumanRequest, decision: str, answer: str, comment: str) -> None:
    """Decides ``request`` when this response is enough; the caller holds its lock."""
    now = timezone.now()
    if decision == Decision.APPROVE:
        approvals = request.responses.filter(decision=Decision.APPROVE).count()
        if approvals < request.approvals_required:
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
    if request.invocation_id is not None:
        if request.outcome == HumanRequest.Outcome.APPROVED:
            from tools.tasks import tool_invocation_run as tool_invocation_run_task

            invocation_id = str(request.invocation_id)
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
    request_id = _request_pk(request_id)
    with transaction.atomic():
        request = HumanRequest.objects.select_for_update().filter(pk=request_id).first()
        if request is None:
            raise ApplicationError(f"No human request '{request_id}'.", "not_found")
        if not request.is_pending:
            raise ApplicationError(closed_message(request), "conflict")
        _close(
            request,
            Status.CANCELLED,
            reason or "The call was cancelled before a reviewer decided.",
        )
    return request
