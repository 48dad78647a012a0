"""The audit-only report: per audit-only rule, how many calls in a period it would have
sent for approval or denied, read from the calls' audit rows (``ToolInvocation.would_require``,
written by ``hitl.rules.decide``). Shown in the admin, linked from the rules' list."""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Count
from django.utils import timezone

from hitl.models import ApprovalRule
from tools.models import ToolInvocation

# What the report counts: the outcomes a team needs to know of before enforcing a rule.
COUNTED = ("approval", "deny")


@dataclass
class AuditRow:
    """One rule's figures; ``rule`` is None for a rule deleted since (its label remains)."""

    rule_id: int
    label: str
    rule: ApprovalRule | None
    approval: int = 0
    deny: int = 0

    @property
    def total(self) -> int:
        return self.approval + self.deny


def period_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """From the start of ``start`` to the end of ``end`` (both included), in the site's time
    zone, as aware datetimes."""
    zone = timezone.get_current_timezone()
    since = datetime.combine(start, time.min, tzinfo=zone)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone)
    return since, until


def audit_only_report(*, start: date, end: date) -> list[AuditRow]:
    """Every audit-only rule (enabled or not), and every rule that recorded a would-be
    outcome in the period (one since enforced or deleted included), with its counts from
    ``start`` to ``end``; the busiest first, then by position. One grouped query over the
    period's audit rows that an audit-only rule matched, and one for the rules."""
    since, until = period_bounds(start, end)
    counts = (
        ToolInvocation.objects.filter(
            created_at__gte=since,
            created_at__lt=until,
            would_require__outcome__in=COUNTED,
        )
        .values("would_require__rule_id", "would_require__outcome", "would_require__rule")
        .annotate(n=Count("id"))
        .order_by()
    )
    rows: dict[int, AuditRow] = {}
    for item in counts:
        rule_id = int(item["would_require__rule_id"])
        row = rows.setdefault(rule_id, AuditRow(rule_id, item["would_require__rule"], None))
        outcome = item["would_require__outcome"]
        setattr(row, outcome, getattr(row, outcome) + item["n"])
    rules = ApprovalRule.objects.filter(audit_only=True) | ApprovalRule.objects.filter(
        pk__in=list(rows)
    )
    for rule in rules:
        row = rows.setdefault(rule.pk, AuditRow(rule.pk, "", None))
        row.rule, row.label = rule, f"#{rule.pk} {rule.name}"
    return sorted(
        rows.values(),
        key=lambda r: (-r.total, r.rule.position if r.rule else 1 << 31, r.rule_id),
    )
