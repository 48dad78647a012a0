"""Allow-always grants: "approve, and allow this caller to run this tool for N hours".

A grant is an ``ApprovalRule`` that allows, names its caller and expires
(``ApprovalRule.is_grant``); ``hitl.rules`` lets a call through with it instead of asking
for an approval (never instead of a denial). The caller is the approved call's user
*and* the token it came with (none, for a call made in a browser session): a token is
one agent's credential, so a grant made for it lets neither that user's other agents nor
their own session through, and deleting the token ends the grant.

A grant is made only with an approval that settles its request alone (one approval
required): a grant lets later calls through on one reviewer's word, so it may not stand
in for an M-of-N decision. The reviewer must be allowed to approve the request (the
respond path checks that first); the grant is made in the same transaction as the
approval, and both appear in the request's trail, as does its revocation.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from hitl.models import ApprovalRule, HumanRequest, HumanRequestEvent
from qmcp_site.errors import ApplicationError
from users.models import ApiToken, User

GRANT_HOURS_MIN, GRANT_HOURS_MAX = 1, 720
# What the reviewer pages offer; the APIs take any whole number of hours within the bounds.
GRANT_HOURS_OFFERED = (1, 8, 24)
REVOKE_PERMISSION = "hitl.change_approvalrule"
Event = HumanRequestEvent.Kind


@dataclass(frozen=True)
class GrantTerms:
    """What a reviewer grants: ``hours`` from the approval, for the call's exact arguments
    (``exact_arguments``) or for any."""

    hours: int
    exact_arguments: bool = True

    @classmethod
    def of(cls, hours, arguments: str = "exact") -> "GrantTerms | None":
        """The terms an interface's fields describe: None when ``hours`` is empty or 0 (no
        grant); ``invalid`` for hours out of bounds or ``arguments`` not "exact"/"any"."""
        if hours in (None, "", 0, "0"):
            return None
        try:
            hours = int(hours)
        except (TypeError, ValueError):
            hours = 0
        if not GRANT_HOURS_MIN <= hours <= GRANT_HOURS_MAX:
            raise ApplicationError(
                f"A grant lasts between {GRANT_HOURS_MIN} and {GRANT_HOURS_MAX} hours.",
                "invalid",
                {"grant_hours": hours},
            )
        if arguments not in ("exact", "any"):
            raise ApplicationError(
                "A grant is for the 'exact' arguments or for 'any'.",
                "invalid",
                {"grant_arguments": arguments},
            )
        return cls(hours=hours, exact_arguments=arguments == "exact")


def grant_check(*, request: HumanRequest, terms: GrantTerms) -> None:
    """Raises ``invalid`` unless an approval of ``request`` may come with a grant: a gated
    call of a known caller, needing one approval, whose token (if any) still exists."""
    invocation = request.invocation
    if invocation is None:
        raise ApplicationError("Only an approval of a tool call can come with a grant.", "invalid")
    if request.approvals_required > 1:
        raise ApplicationError(
            f"This request needs {request.approvals_required} approvals: a grant would let "
            "later calls through on one reviewer's word.",
            "invalid",
        )
    if invocation.principal_id is None:
        raise ApplicationError("The caller of this call no longer exists.", "invalid")
    if (
        invocation.token_id is not None
        and not ApiToken.objects.filter(pk=invocation.token_id).exists()
    ):
        raise ApplicationError("The token this call came with no longer exists.", "invalid")


def grant_create(
    *, request: HumanRequest, granted_by: User, terms: GrantTerms, digest: str
) -> ApprovalRule:
    """The grant of an approved ``request`` (the caller holds its lock, and checked the
    terms with :func:`grant_check`), for the arguments whose ``digest`` was approved
    when ``terms.exact_arguments``; recorded in the request's trail."""
    invocation = request.invocation
    grant = ApprovalRule.objects.create(
        name=f"Grant: {invocation.tool_name} for {invocation.principal_label}"[:200],
        tool_name=invocation.tool_name,
        position=0,
        outcome=ApprovalRule.Outcome.ALLOW,
        caller_id=invocation.principal_id,
        caller_token_id=invocation.token_id,
        arguments_digest=digest if terms.exact_arguments else "",
        expires_at=timezone.now() + timedelta(hours=terms.hours),
        granted_by=granted_by,
        granted_from=request,
    )
    HumanRequestEvent.objects.create(
        request=request,
        kind=Event.GRANTED,
        actor=granted_by,
        detail={
            "grant": grant.pk,
            "label": grant.grant_label,
            "arguments": "exact" if terms.exact_arguments else "any",
        },
    )
    return grant


def grants_revoke(*, grants, by: User) -> int:
    """Revokes the live grants among ``grants`` (a queryset of rules): each stops matching
    at once in this process (and within ``QMCP_POLICY_CACHE_SECONDS`` in the others),
    records who revoked it and when, and says so in its request's trail. ``forbidden``
    without the permission to change approval rules. Returns how many were revoked."""
    if not (by.is_active and by.is_staff and by.has_perm(REVOKE_PERMISSION)):
        raise ApplicationError(
            "Revoking a grant needs the permission to change rules.", "forbidden"
        )
    now = timezone.now()
    count = 0
    for grant in grants.filter(caller__isnull=False, revoked_at=None).select_related(
        "caller", "caller_token"
    ):
        grant.revoked_at, grant.revoked_by, grant.enabled = now, by, False
        grant.save(update_fields=["revoked_at", "revoked_by", "enabled", "updated_at"])
        if grant.granted_from_id is not None:
            HumanRequestEvent.objects.create(
                request_id=grant.granted_from_id,
                kind=Event.REVOKED,
                actor=by,
                detail={"grant": grant.pk, "label": grant.grant_label},
            )
        count += 1
    return count


def grants_of_request(*, request: HumanRequest) -> list[dict]:
    """The grants made with ``request``'s approval, for its page: each rule, its state
    ("active", "expired" or "revoked"), whether it binds the arguments, and how many calls
    it let through (the audit rows that name it)."""
    from tools.models import ToolInvocation

    now = timezone.now()
    rows = []
    for grant in request.grants.select_related("caller", "caller_token", "revoked_by"):
        if grant.revoked_at is not None:
            state = "revoked"
        elif grant.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        calls = ToolInvocation.objects.filter(
            tool_name=grant.tool_name, rule__startswith=f"grant #{grant.pk} "
        ).count()
        rows.append(
            {
                "rule": grant,
                "state": state,
                "arguments": "exact" if grant.arguments_digest else "any",
                "calls": calls,
            }
        )
    return rows
