from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from qmcp_site.ids import uuid7
from tools.registry import RISK_LEVELS

# The bounds of a policy's approval rules, which every approval request it creates obeys.
APPROVALS_MAX = 10
APPROVAL_TIMEOUT_MIN = 10
APPROVAL_TIMEOUT_MAX = 30 * 86400


class ToolPolicy(models.Model):
    """Per-tool rules, created from the registry's defaults and edited in the admin."""

    # The values are tools.registry.RISK_LEVELS, which a tool's ``risk`` default names.
    class Risk(models.TextChoices):
        LOW = "low", "Low"
        MEDIUM = "medium", "Medium"
        HIGH = "high", "High"
        CRITICAL = "critical", "Critical"

    tool_name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    requires_approval = models.BooleanField(default=False)
    approver_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        help_text="Only members of this group may approve; empty means any reviewer.",
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(APPROVALS_MAX)]
    )
    approval_timeout_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[
            MinValueValidator(APPROVAL_TIMEOUT_MIN),
            MaxValueValidator(APPROVAL_TIMEOUT_MAX),
        ],
        help_text="Between 10 seconds and 30 days.",
    )
    risk_level = models.CharField(
        max_length=8,
        choices=Risk.choices,
        default=Risk.MEDIUM,
        help_text="Shown to reviewers as a badge; a critical call needs a comment to approve.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tool_name"]
        verbose_name_plural = "tool policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(risk_level__in=RISK_LEVELS),
                name="tools_policy_risk_level_valid",
            )
        ]

    def __str__(self):
        return self.tool_name


class ToolInvocation(models.Model):
    """The audit record of one tool call through any interface; never edited by hand."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        REFUSED = "refused", "Refused"
        AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    class Via(models.TextChoices):
        MCP = "mcp", "MCP"
        REST = "rest", "REST /v1"
        API = "api", "DRF /api"
        ADMIN = "admin", "Admin"
        TASK = "task", "Celery task"
        CLI = "cli", "manage.py"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tool_name = models.CharField(max_length=100)
    arguments = models.JSONField(null=True, blank=True)
    principal = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tool_invocations",
        db_index=False,  # the (principal, -created_at) index serves it
        db_constraint=False,  # see token
    )
    principal_label = models.CharField(
        max_length=255, blank=True, help_text="Who called, kept if the user is deleted."
    )
    # No database constraint on principal and token: a constraint makes every audit insert
    # lock the user's and the token's rows (FOR KEY SHARE, a WAL record each), and audit
    # rows are written on every call. Deleting a user through Django sets principal to NULL;
    # principal_label keeps who called. Deleting a token leaves token_id as it was, naming a
    # token that no longer exists: the row still says the call came with a token, so a
    # waiting call of a deleted token is refused when approved instead of running with the
    # session's scopes, and deleting a token rewrites none of its audit rows.
    # Nor an index: nothing looks calls up by token (the lists filter by caller, tool and
    # status), and deleting one touches no audit row.
    token = models.ForeignKey(
        "users.ApiToken",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    oauth_client = models.ForeignKey(
        "oauth2_provider.Application",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,  # see token
        db_index=False,  # a partial index in Meta: only calls with an OAuth token have one
        help_text="The OAuth client the call came through, for a call with an OAuth token.",
    )
    via = models.CharField(max_length=16, choices=Via.choices)
    mcp_session_id = models.CharField(max_length=64, blank=True)
    mcp_protocol_version = models.CharField(
        max_length=16,
        blank=True,
        help_text="The MCP revision the call was made in (2026-07-28 calls have no session).",
    )
    request_id = models.CharField(max_length=128, blank=True)
    rule = models.CharField(
        max_length=200,
        blank=True,
        help_text="The approval rule that decided the call; empty: the tool's policy did.",
    )
    # What the first matching audit-only rule would have decided (the call was decided by
    # the enforced rules): {"rule_id", "rule", "outcome", "text"}; null when none matched.
    would_require = models.JSONField(null=True, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    # Set only on a call that waits for approval (tools.binding): the approval is bound to
    # this digest of the tool and its arguments (re-bound by an approve-with-edits), and the
    # approved run refuses arguments that do not match it. Empty on a call made before
    # digests were kept and never gated: such a call runs with its stored arguments.
    arguments_digest = models.CharField(
        max_length=64, blank=True, help_text="sha256 of the tool and arguments approved."
    )
    # The MCP client's clientInfo.name, kept only for a gated call, so that the approved run
    # is checked against the rules with the same caller facts as the call was.
    client_name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    # An approved call runs on a Celery worker that holds a lease on it and renews it while
    # the tool runs; a run whose lease lapsed lost its worker (see tool_invocations_recover).
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="How many times an approved call's run was started."
    )
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # Every row is written on a tool call's path, so each index must earn its cost: the
        # audit log is filtered by caller, tool or status, newest first.
        indexes = [
            models.Index(fields=["principal", "-created_at"]),
            models.Index(fields=["tool_name", "-created_at"]),
            models.Index(fields=["status", "-created_at"]),
            # For deleting an OAuth client (its calls' oauth_client is set to NULL); a call
            # with an API token, the common case, writes nothing to it.
            models.Index(
                fields=["oauth_client"],
                condition=models.Q(oauth_client__isnull=False),
                name="tools_invocation_oauth_client",
            ),
        ]

    def __str__(self):
        return f"{self.tool_name} {self.status} ({self.id})"

    FINAL_STATUSES = frozenset(
        {
            Status.SUCCEEDED,
            Status.FAILED,
            Status.REFUSED,
            Status.REJECTED,
            Status.EXPIRED,
            Status.CANCELLED,
        }
    )

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES
