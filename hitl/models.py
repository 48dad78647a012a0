from datetime import UTC

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from qmcp_site.ids import uuid7
from tools.models import APPROVAL_TIMEOUT_MAX, APPROVAL_TIMEOUT_MIN, APPROVALS_MAX, ToolPolicy
from tools.registry import RISK_LEVELS

# A chosen option is stored in HumanResponse.option (a varchar), so no option may be longer.
OPTION_MAX_LENGTH = 200
OPTIONS_MAX = 50


def validate_options(value) -> None:
    """A question's fixed answers: None, or 1 to OPTIONS_MAX distinct non-blank strings of
    at most OPTION_MAX_LENGTH characters."""
    if value is None:
        return
    if not isinstance(value, list) or not value or len(value) > OPTIONS_MAX:
        raise ValidationError(f"Options must be a list of 1 to {OPTIONS_MAX} strings.")
    if not all(isinstance(o, str) and o.strip() for o in value):
        raise ValidationError("Options must be non-empty strings.")
    too_long = [o[:40] for o in value if len(o) > OPTION_MAX_LENGTH]
    if too_long:
        raise ValidationError(
            f"An option may have at most {OPTION_MAX_LENGTH} characters: {too_long[0]!r}..."
        )
    if len(set(value)) != len(value):
        raise ValidationError("Options must be distinct.")


class HumanRequest(models.Model):
    """Something only a person can settle: approve or reject a tool call, or answer a question."""

    class Kind(models.TextChoices):
        APPROVAL = "approval", "Approval"
        QUESTION = "question", "Question"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RESPONDED = "responded", "Responded"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    class Outcome(models.TextChoices):
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        ANSWERED = "answered", "Answered"

    # The risk levels are the policy's: one list, in tools.
    Risk = ToolPolicy.Risk

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.APPROVAL)
    title = models.CharField(max_length=200)
    prompt = models.TextField(blank=True)
    context = models.JSONField(default=dict, blank=True)
    options = models.JSONField(
        null=True, blank=True, validators=[validate_options], help_text="Allowed answers, if fixed."
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)
    answer = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="human_requests",
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(APPROVALS_MAX)]
    )
    approver_group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL)
    invocation = models.OneToOneField(
        "tools.ToolInvocation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="human_request",
    )
    # Copied from the tool's policy when the request is made: the level it was decided under.
    risk_level = models.CharField(max_length=8, choices=Risk.choices, default=Risk.MEDIUM)
    reason = models.TextField(blank=True, help_text="The agent's stated reason for the call.")
    # The tool's preview when the request was made: what the reviewer was shown.
    preview = models.JSONField(null=True, blank=True)
    # Approve with edits: the arguments a reviewer changed the call to, and who. The call's
    # original arguments stay in ``context["arguments"]``.
    edited_arguments = models.JSONField(null=True, blank=True)
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    expires_at = models.DateTimeField(db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    # When reviewers were told that the request is about to expire (once per request).
    expiry_warned_at = models.DateTimeField(null=True, blank=True)
    # Escalation (from the rule that asked for the approval): when the request is still
    # pending at ``escalate_at``, the beat task sets ``escalated_at`` (once) and the members
    # of ``escalation_group`` may decide it too (see hitl.rules.decider_refusal).
    escalation_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    escalate_at = models.DateTimeField(null=True, blank=True, db_index=True)
    escalated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        permissions = [("respond_humanrequest", "Can respond to human requests")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "responded", "expired", "cancelled"]),
                name="hitl_request_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(approvals_required__gte=1), name="hitl_request_approvals_min"
            ),
            models.CheckConstraint(
                condition=models.Q(risk_level__in=RISK_LEVELS),
                name="hitl_request_risk_level_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(approvals_required__lte=APPROVALS_MAX),
                name="hitl_request_approvals_max",
            ),
        ]

    def __str__(self):
        return self.title

    @property
    def is_pending(self) -> bool:
        return self.status == self.Status.PENDING

    @property
    def is_overdue(self) -> bool:
        return self.is_pending and self.expires_at <= timezone.now()


class HumanResponse(models.Model):
    """One reviewer's decision or answer on a request; one per reviewer and request."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approve"
        REJECT = "reject", "Reject"
        ANSWER = "answer", "Answer"

    request = models.ForeignKey(HumanRequest, on_delete=models.CASCADE, related_name="responses")
    responder = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="human_responses"
    )
    decision = models.CharField(max_length=16, choices=Decision.choices)
    option = models.CharField(max_length=OPTION_MAX_LENGTH, blank=True)
    answer = models.TextField(blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "responder"], name="hitl_one_response_per_reviewer"
            )
        ]

    def __str__(self):
        return f"{self.get_decision_display()} by {self.responder}"


class HumanRequestEvent(models.Model):
    """One line of a request's trail: created, notified, viewed, edited, extended, decided.

    The run and its result are read from the invocation; responses from HumanResponse.
    """

    class Kind(models.TextChoices):
        CREATED = "created", "Created"
        NOTIFIED = "notified", "Notified"
        VIEWED = "viewed", "Viewed"
        EDITED = "edited", "Arguments edited"
        EXTENDED = "extended", "Extended"
        DECIDED = "decided", "Decided"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"
        GRANTED = "granted", "Grant made"
        REVOKED = "revoked", "Grant revoked"
        ESCALATED = "escalated", "Escalated"
        DELEGATED = "delegated", "Handed on"

    request = models.ForeignKey(HumanRequest, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["request", "created_at"])]

    def __str__(self):
        return f"{self.get_kind_display()} {self.created_at:%Y-%m-%d %H:%M:%S}"


class HumanRequestDelegation(models.Model):
    """A reviewer handed a request to a named colleague: ``delegate`` may now decide it
    (approver group or not), and ``delegated_by`` may not any more (one person, one say)."""

    request = models.ForeignKey(HumanRequest, on_delete=models.CASCADE, related_name="delegations")
    delegate = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    delegated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "delegate"], name="hitl_one_delegation_per_delegate"
            )
        ]

    def __str__(self):
        return f"{self.request} handed to {self.delegate}"


class ReviewerSettings(models.Model):
    """How a reviewer wants to hear of requests: email (the default), chat or nothing."""

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        CHAT = "chat", "Chat webhook"
        NONE = "none", "None"

    class ChatFormat(models.TextChoices):
        SLACK = "slack", "Slack"
        TEAMS = "teams", "Microsoft Teams"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reviewer_settings"
    )
    notify_via = models.CharField(max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    chat_webhook_url = models.URLField(
        blank=True, help_text="An incoming webhook; empty means the team's QMCP_CHAT_WEBHOOK_URL."
    )
    chat_format = models.CharField(
        max_length=8, choices=ChatFormat.choices, default=ChatFormat.SLACK
    )

    class Meta:
        verbose_name = "reviewer settings"
        verbose_name_plural = "reviewer settings"

    def __str__(self):
        return f"{self.user}: {self.get_notify_via_display()}"


# A rule's timeout and escalation deadline: between 10 seconds and 30 days.
TIMEOUT_VALIDATORS = [
    MinValueValidator(APPROVAL_TIMEOUT_MIN),
    MaxValueValidator(APPROVAL_TIMEOUT_MAX),
]


class ApprovalRule(models.Model):
    """One rule of the approval policy: when its conditions hold for a call, its outcome
    decides the call instead of the tool's ``ToolPolicy`` default.

    A call is tested against the enabled rules of its tool and those for every tool (no
    tool name), in ``position`` order (then id); the first that matches wins. The
    conditions are JSON data (``hitl.conditions``); approval parameters left empty come from
    the tool's policy. An approval may name an escalation deadline and group. An
    ``audit_only`` rule decides nothing: it is tried in shadow, and the call's audit row
    records what it would have done. Evaluated by ``hitl.rules``.
    """

    class Outcome(models.TextChoices):
        ALLOW = "allow", "Allow"
        APPROVAL = "approval", "Require approval"
        DENY = "deny", "Deny"

    name = models.CharField(
        max_length=200, help_text='Shown to reviewers, e.g. "production deploys need 2 approvals".'
    )
    tool_name = models.CharField(
        max_length=100, blank=True, help_text="Empty: the rule applies to every tool."
    )
    position = models.PositiveIntegerField(
        default=100, help_text="Lower positions are tried first."
    )
    enabled = models.BooleanField(default=True)
    conditions = models.JSONField(
        default=dict,
        blank=True,
        help_text="JSON: arguments, caller and time tests (see the README's rules section).",
    )
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    approver_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Approval: only its members approve; empty means the tool's policy's group.",
    )
    approvals_required = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(APPROVALS_MAX)],
        help_text="Approval: M of N; empty means the tool's policy's.",
    )
    approval_timeout_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=TIMEOUT_VALIDATORS,
        help_text="Approval: between 10 seconds and 30 days; empty means the tool's policy's.",
    )
    risk_level = models.CharField(
        max_length=8,
        choices=ToolPolicy.Risk.choices,
        blank=True,
        help_text="Approval: empty means the tool's policy's.",
    )
    deny_message = models.TextField(
        blank=True, max_length=2000, help_text="Deny: what the agent is told, as the tool's error."
    )
    # A grant ("approve and allow this caller for N hours", hitl.grants): an allow rule made
    # by a reviewer while approving a call, for that call's caller (the same user, through
    # the same token or, for a call made in a browser session, without one), until
    # ``expires_at``; tried before every other rule, and never after it expires or is revoked.
    caller = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="A grant: the user whose calls it lets through.",
    )
    caller_token = models.ForeignKey(
        "users.ApiToken",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="A grant: the token those calls must come with; empty: no token.",
    )
    arguments_digest = models.CharField(
        max_length=64,
        blank=True,
        help_text="A grant for exact arguments: their sha256 (tools.binding); empty: any.",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="A grant: until when.")
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    granted_from = models.ForeignKey(
        HumanRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="grants"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    escalate_after_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=TIMEOUT_VALIDATORS,
        help_text="Approval: undecided this long after it was asked, the request is escalated.",
    )
    escalation_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Approval: once escalated, its members may decide too, and are notified.",
    )
    audit_only = models.BooleanField(
        default=False,
        help_text="Tried in shadow: the call is decided by the other rules, and its audit row "
        "records what this rule would have required.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "id"]
        indexes = [models.Index(fields=["tool_name", "position"])]

    def __str__(self):
        return self.name

    @property
    def is_grant(self) -> bool:
        return self.caller_id is not None

    @property
    def grant_label(self) -> str:
        """What the audit row of a call the grant lets through names it by."""
        who = self.caller.email if self.caller_id else "?"
        if self.caller_token_id:
            who += f" (token {self.caller_token.prefix}…)"
        until = timezone.localtime(self.expires_at, UTC) if self.expires_at else None
        return f"grant #{self.pk} for {who} until {until:%Y-%m-%d %H:%M} UTC"[:200]

    def clean(self):
        """Refuses conditions that do not fit the schema, an unknown tool, a deny without a
        message, and approval parameters on a rule that does not ask for approval."""
        from hitl.conditions import conditions_parse
        from tools.registry import get_tool

        errors: dict[str, str] = {}
        try:
            conditions_parse(self.conditions)
        except ValueError as exc:
            errors["conditions"] = f"Invalid conditions: {exc}"
        if self.tool_name and get_tool(self.tool_name) is None:
            errors["tool_name"] = f"No tool is named {self.tool_name!r}."
        if self.outcome == self.Outcome.DENY and not self.deny_message.strip():
            errors["deny_message"] = "A deny rule needs the message the agent is told."
        if self.outcome != self.Outcome.APPROVAL:
            given = [
                field
                for field in (
                    "approver_group",
                    "approvals_required",
                    "approval_timeout_seconds",
                    "escalate_after_seconds",
                    "escalation_group",
                )
                if getattr(self, field) is not None
            ] + (["risk_level"] if self.risk_level else [])
            for field in given:
                errors[field] = "Only a rule that requires approval has approval parameters."
        if self.is_grant:
            if self.outcome != self.Outcome.ALLOW or self.expires_at is None or self.conditions:
                errors["caller"] = "A grant allows, expires, and has no other conditions."
        elif self.expires_at is not None or self.arguments_digest or self.caller_token_id:
            errors["expires_at"] = "Only a grant (a rule naming its caller) has grant fields."
        errors.update(self._escalation_errors())
        if errors:
            raise ValidationError(errors)

    def _escalation_errors(self) -> dict[str, str]:
        """A deadline needs a group and a group a deadline; the deadline comes before the
        rule's own timeout."""
        if self.outcome != self.Outcome.APPROVAL:
            return {}
        after, group = self.escalate_after_seconds, self.escalation_group_id
        if after is not None and group is None:
            return {"escalation_group": "An escalation deadline needs the group to escalate to."}
        if group is not None and after is None:
            return {"escalate_after_seconds": "Escalating needs a deadline."}
        timeout = self.approval_timeout_seconds
        if after is not None and timeout is not None and after >= timeout:
            return {"escalate_after_seconds": "Escalate before the request times out."}
        return {}
