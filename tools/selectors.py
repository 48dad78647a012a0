import uuid
from datetime import datetime

from django.db.models import QuerySet

from qmcp_site.errors import ApplicationError
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import ToolSpec, all_tools
from users.models import ApiToken
from users.principals import Principal

# The admin's audit log opens to staff with either of these (ModelAdmin.has_view_permission).
INVOCATION_READ_PERMISSIONS = ("tools.view_toolinvocation", "tools.change_toolinvocation")


def tool_list(*, principal: Principal) -> list[tuple[ToolSpec, ToolPolicy | None]]:
    """Every registered tool with its policy (None until the policy row exists)."""
    principal.require_scope(ApiToken.Scope.TOOLS_READ)
    policies = {p.tool_name: p for p in ToolPolicy.objects.select_related("approver_group")}
    return [(spec, policies.get(spec.name)) for spec in all_tools()]


def invocation_reads_all(*, user) -> bool:
    """Whether ``user`` may read every caller's invocations: exactly those the admin's audit
    log lets in (active staff with the view or change permission on ToolInvocation)."""
    return (
        user.is_active
        and user.is_staff
        and any(user.has_perm(perm) for perm in INVOCATION_READ_PERMISSIONS)
    )


def invocation_queryset(*, principal: Principal) -> QuerySet[ToolInvocation]:
    """Invocations the principal may read: everyone's for :func:`invocation_reads_all`,
    otherwise only their own calls (staff included)."""
    principal.require_scope(ApiToken.Scope.TOOLS_READ)
    qs = ToolInvocation.objects.all()
    if not invocation_reads_all(user=principal.user):
        qs = qs.filter(principal=principal.user)
    return qs


def invocation_list(
    *,
    principal: Principal,
    tool: str | None = None,
    status: str | None = None,
    principal_id: int | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[ToolInvocation]:
    """Readable invocations, newest first, filtered by tool, status, caller and creation time
    (``created_after`` inclusive, ``created_before`` exclusive)."""
    if status is not None and status not in ToolInvocation.Status.values:
        raise ApplicationError(
            f"Unknown status '{status}'.",
            "bad_request",
            {"allowed": list(ToolInvocation.Status.values)},
        )
    qs = invocation_queryset(principal=principal)
    if tool:
        qs = qs.filter(tool_name=tool)
    if status:
        qs = qs.filter(status=status)
    if principal_id is not None:
        qs = qs.filter(principal_id=principal_id)
    if created_after is not None:
        qs = qs.filter(created_at__gte=created_after)
    if created_before is not None:
        qs = qs.filter(created_at__lt=created_before)
    return qs.order_by("-created_at")


def invocation_get(*, principal: Principal, invocation_id: uuid.UUID | str) -> ToolInvocation:
    """One readable invocation; ``not_found`` for an unknown, malformed or foreign id."""
    try:
        pk = uuid.UUID(str(invocation_id))
    except ValueError:
        pk = None
    invocation = invocation_queryset(principal=principal).filter(pk=pk).first() if pk else None
    if invocation is None:
        raise ApplicationError(
            f"No invocation with id '{invocation_id}'.", "not_found", {"id": str(invocation_id)}
        )
    return invocation


def invocation_count_with_argument(*, key: str, value) -> int:
    """How many recorded calls, of any tool, had ``arguments[key] == value`` (for previews:
    "how many calls touched this user")."""
    return ToolInvocation.objects.filter(**{f"arguments__{key}": value}).count()
