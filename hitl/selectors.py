import uuid

from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When

from hitl.models import HumanRequest, HumanResponse
from hitl.services import human_request_reads_all, human_requests_expire
from qmcp_site.errors import ApplicationError
from users.principals import Principal


def human_request_list(*, status: str | None = None) -> QuerySet[HumanRequest]:
    """Requests, pending first and oldest first; overdue ones are expired first."""
    if status is not None and status not in HumanRequest.Status.values:
        raise ApplicationError(
            f"Unknown status '{status}'.", "bad_request", {"allowed": HumanRequest.Status.values}
        )
    human_requests_expire()
    qs = HumanRequest.objects.select_related("invocation", "created_by", "approver_group")
    if status:
        qs = qs.filter(status=status)
    pending_first = Case(
        When(status=HumanRequest.Status.PENDING, then=Value(0)),
        default=Value(1),
        output_field=IntegerField(),
    )
    return qs.order_by(pending_first, "created_at")


def human_request_get(*, request_id, expire: bool = True) -> HumanRequest:
    """One request with its responses; ``not_found`` for an unknown or malformed id.

    Overdue requests are expired first, unless ``expire`` is False (the caller has just
    settled this request).
    """
    try:
        pk = uuid.UUID(str(request_id))
    except ValueError:
        pk = None
    if expire:
        human_requests_expire(request_id=pk)
    request = (
        HumanRequest.objects.select_related("invocation", "created_by", "approver_group")
        .prefetch_related("responses__responder")
        .filter(pk=pk)
        .first()
        if pk
        else None
    )
    if request is None:
        raise ApplicationError(f"No human request '{request_id}'.", "not_found")
    return request


def human_request_visible_list(
    *, principal: Principal, status: str | None = None
) -> QuerySet[HumanRequest]:
    """:func:`human_request_list` as ``principal`` may see it: every request for
    :func:`~hitl.services.human_request_reads_all`, otherwise only those they created (staff
    included); each annotated with its ``approval_count``."""
    qs = human_request_list(status=status)
    if not human_request_reads_all(user=principal.user):
        qs = qs.filter(created_by=principal.user)
    return qs.annotate(
        approval_count=Count(
            "responses", filter=Q(responses__decision=HumanResponse.Decision.APPROVE)
        )
    )


def human_request_visible_get(*, principal: Principal, request_id) -> HumanRequest:
    """:func:`human_request_get`; someone else's request is ``not_found`` to anyone who may
    not read every request."""
    request = human_request_get(request_id=request_id)
    if request.created_by_id != principal.user.pk and not human_request_reads_all(
        user=principal.user
    ):
        # Reported as unknown, not as forbidden.
        raise ApplicationError(f"No human request '{request_id}'.", "not_found")
    return request
