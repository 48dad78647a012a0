"""Human requests: create, respond (approve, reject, answer), cancel and expire.

A decision on a gated tool call is carried out through tools' services: approval queues
the run (a Celery task, after commit), rejection and expiry end the call with the reason.
"""

import json
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from hitl.models import HumanRequest, HumanResponse
from hitl.signals import human_request_changed
from qmcp_site.errors import ApplicationError
from tools.models import ToolInvocation
from tools.services import tool_invocation_end
from users.models import User

Status = HumanRequest.Status
Decision = HumanResponse.Decision
RESPOND_PERMISSION = "hitl.respond_humanrequest"


def _announce(request: HumanRequest, event: str) -> None:
    request_id = request.pk
    transaction.on_commit(
        lambda: human_request_changed.send(sender=HumanRequest, request_id=request_id, event=event)
    )


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
    if not title or not title.strip():
        raise ApplicationError("A request needs a title.", "invalid")
    if options is not None:
        if (
            not isinstance(options, list)
            or not options
            or not all(isinstance(o, str) and o.strip() for o in options)
        ):
            raise ApplicationError("Options must be a non-empty list of strings.", "invalid")
        if len(set(options)) != len(options):
            raise ApplicationError("Options must be distinct.", "invalid")
    if not 10 <= timeout_seconds <= 30 * 86400:
        raise ApplicationError("The timeout must be between 10 seconds and 30 days.", "invalid")
    if approvals_required < 1:
        raise ApplicationError("At least one approval is required.", "invalid")
    request = HumanRequest.objects.create(
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
    _announce(request, "created")
    return request


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
    return "This request was withdrawn by the caller: the call was cancelled and will not run."


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


def _expire(request: HumanRequest) -> None:
    _close(request, Status.EXPIRED, "No reviewer decided in time; the call was not run.")


def human_requests_expire(*, request_id=None) -> int:
    """Expires every pending request past its time (or just ``request_id``); returns how many."""
    count = 0
    overdue = HumanRequest.objects.filter(status=Status.PENDING, expires_at__lte=timezone.now())
    if request_id is not None:
        overdue = overdue.filter(pk=request_id)
    for request_id in overdue.values_list("pk", flat=True):
        with transaction.atomic():
            request = HumanRequest.objects.select_for_update().filter(pk=request_id).first()
            if request is not None and request.is_overdue:
                _expire(request)
                count += 1
    return count


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
