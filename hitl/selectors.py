import uuid

from django.core.paginator import Page, Paginator
from django.db.models import Case, F, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from hitl.models import HumanRequest
from hitl.rules import APPROVAL_COUNT
from hitl.services import (
    human_request_reads_all,
    human_requests_expire,
    human_requests_expire_soon,
)
from qmcp_site.errors import ApplicationError
from users.principals import Principal


def human_request_list(*, status: str | None = None) -> QuerySet[HumanRequest]:
    """Requests, open ones first and oldest first.

    An overdue request is never listed as open: the filters and the order read
    ``expires_at``, and the overdue ones are expired in bulk after this read
    (:func:`~hitl.services.human_requests_expire_soon`), not by it.
    """
    if status is not None and status not in HumanRequest.Status.values:
        raise ApplicationError(
            f"Unknown status '{status}'.", "bad_request", {"allowed": HumanRequest.Status.values}
        )
    human_requests_expire_soon()
    now = timezone.now()
    open_ = Q(status=HumanRequest.Status.PENDING, expires_at__gt=now)
    overdue = Q(status=HumanRequest.Status.PENDING, expires_at__lte=now)
    qs = HumanRequest.objects.select_related("invocation", "created_by", "approver_group")
    if status == HumanRequest.Status.PENDING:
        qs = qs.filter(open_)
    elif status == HumanRequest.Status.EXPIRED:
        qs = qs.filter(Q(status=status) | overdue)
    elif status:
        qs = qs.filter(status=status)
    open_first = Case(When(open_, then=Value(0)), default=Value(1), output_field=IntegerField())
    return qs.order_by(open_first, "created_at")


def human_request_get(*, request_id, expire: bool = True) -> HumanRequest:
    """One request with its responses; ``not_found`` for an unknown or malformed id.

    Overdue requests are expired first, unless ``expire`` is False (the caller has just
    settled this request).
    """
    try:
        pk = uuid.UUID(str(request_id))
    except ValueError:
        pk = None
    if expire and pk is not None:
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
    return qs.annotate(approval_count=APPROVAL_COUNT)


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


# Rows per page of the reviewer queue (/hitl/).
QUEUE_PAGE_SIZE = 50
# The queue's status filter: a request's status, or for a decided one its outcome.
QUEUE_STATES = ("pending", "approved", "rejected", "answered", "expired", "cancelled")


def human_request_search(
    *,
    tool: str = "",
    requester: str = "",
    risk: str = "",
    state: str = "",
    query: str = "",
) -> QuerySet[HumanRequest]:
    """:func:`human_request_list` narrowed for the reviewer queue, each annotated with its
    ``approval_count``: by tool name, requester (email fragment), risk level, state (one of
    QUEUE_STATES) and words found in the title, reason, prompt, tool or requester."""
    if state and state not in QUEUE_STATES:
        raise ApplicationError(
            f"Unknown state '{state}'.", "bad_request", {"allowed": list(QUEUE_STATES)}
        )
    if risk and risk not in HumanRequest.Risk.values:
        raise ApplicationError(
            f"Unknown risk level '{risk}'.", "bad_request", {"allowed": HumanRequest.Risk.values}
        )
    qs = human_request_list()
    if tool:
        qs = qs.filter(invocation__tool_name=tool)
    if requester:
        qs = qs.filter(
            Q(created_by__email__icontains=requester)
            | Q(invocation__principal_label__icontains=requester)
        )
    if risk:
        qs = qs.filter(risk_level=risk)
    if state in HumanRequest.Outcome.values:
        qs = qs.filter(status=HumanRequest.Status.RESPONDED, outcome=state)
    elif state:
        qs = qs.filter(status=state)
    for word in query.split():
        qs = qs.filter(
            Q(title__icontains=word)
            | Q(reason__icontains=word)
            | Q(prompt__icontains=word)
            | Q(invocation__tool_name__icontains=word)
            | Q(created_by__email__icontains=word)
        )
    return qs.annotate(approval_count=APPROVAL_COUNT)


def human_request_queue_page(*, page=1, per_page: int = QUEUE_PAGE_SIZE, **filters) -> Page:
    """One page of the reviewer queue, narrowed by :func:`human_request_search`'s
    ``filters``: open requests oldest first, then the settled ones, most recently decided
    first. A page number that is not one (or past the end) gives the first (or the last)
    page."""
    open_ = Q(status=HumanRequest.Status.PENDING, expires_at__gt=timezone.now())
    qs = human_request_search(**filters).order_by(
        Case(When(open_, then=Value(0)), default=Value(1), output_field=IntegerField()),
        Case(When(open_, then=F("created_at"))).asc(),
        F("decided_at").desc(nulls_last=True),
        "-created_at",
        "pk",
    )
    return Paginator(qs, per_page).get_page(page)


def human_request_pending_count() -> int:
    """How many requests wait for a decision (overdue ones are not counted)."""
    from django.utils import timezone

    return HumanRequest.objects.filter(
        status=HumanRequest.Status.PENDING, expires_at__gt=timezone.now()
    ).count()


def human_request_tool_names() -> list[str]:
    """The tools that have gated calls in the queue, for its filter."""
    return list(
        HumanRequest.objects.exclude(invocation=None)
        .order_by("invocation__tool_name")
        .values_list("invocation__tool_name", flat=True)
        .distinct()
    )
