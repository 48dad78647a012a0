"""The approval queue: human requests, read-only, decided through hitl's services.

Reviewers (staff with ``hitl.respond_humanrequest``) approve or reject with the list's
actions or the buttons on a request's page; both show a confirmation page with a comment
box first, as ``delete_selected`` does, and then call ``human_request_respond``. Whether a
reviewer may decide (approver group, not their own call, still pending) is the service's
call; the admin only shows its message.
"""

import json
import uuid
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, Value, When
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from hitl.audit_report import audit_only_report, period_bounds
from hitl.forms import DelegateForm, ReportPeriodForm
from hitl.grants import GRANT_HOURS_OFFERED, GrantTerms, grants_revoke
from hitl.models import ApprovalRule, HumanRequest, HumanResponse, ReviewerSettings
from hitl.rules import APPROVAL_COUNT, RESPOND_PERMISSION, approvals_count
from hitl.services import (
    delegate_candidates,
    human_request_delegate,
    human_request_reads_all,
    human_requests_expire,
    human_requests_expire_soon,
    human_requests_respond,
    requests_phrase,
)
from qmcp_site.errors import ApplicationError

Decision = HumanResponse.Decision
INVOCATION_VIEW_PERMISSION = "tools.view_toolinvocation"

# The admin index starts with a link to the reviewer queue and its pending count.
admin.site.index_template = "hitl/admin/index.html"

PENDING_FIRST = Case(
    When(status=HumanRequest.Status.PENDING, then=Value(0)),
    default=Value(1),
    output_field=IntegerField(),
)


def _pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _can_see_queue(request) -> bool:
    return human_request_reads_all(user=request.user)


class ToolNameFilter(admin.SimpleListFilter):
    """The tools that have gated calls in the queue."""

    title = "tool"
    parameter_name = "tool"

    def lookups(self, request, model_admin):
        names = (
            HumanRequest.objects.exclude(invocation=None)
            .order_by("invocation__tool_name")
            .values_list("invocation__tool_name", flat=True)
            .distinct()
        )
        return [(name, name) for name in names]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(invocation__tool_name=self.value())
        return queryset


class RequesterFilter(admin.RelatedOnlyFieldListFilter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "requester"


class HumanResponseInline(admin.TabularInline):
    model = HumanResponse
    fields = ("responder", "decision", "option", "answer", "comment", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        # Whoever may see the queue sees who decided; no separate HumanResponse permission.
        return _can_see_queue(request)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(HumanRequest)
class HumanRequestAdmin(admin.ModelAdmin):
    """The approval queue: pending first, oldest first; read-only apart from decisions."""

    change_form_template = "hitl/admin/change_form.html"

    class Media:
        css = {"all": ["hitl/badges.css"]}

    confirmation_template = "hitl/approval_confirm.html"
    list_display = (
        "title",
        "kind",
        "status",
        "outcome",
        "tool",
        "risk",
        "requester",
        "approvals",
        "created_at",
        "expires_at",
        "page_link",
    )
    list_filter = (
        "status",
        "kind",
        "risk_level",
        ToolNameFilter,
        ("created_by", RequesterFilter),
    )
    search_fields = ("title", "prompt", "reason", "invocation__tool_name", "created_by__email")
    date_hierarchy = "created_at"
    ordering = (PENDING_FIRST, "created_at")
    actions = ["approve_selected", "reject_selected"]
    inlines = [HumanResponseInline]
    fieldsets = (
        (None, {"fields": ("title", "kind", "status", "outcome", "answer", "approvals")}),
        (
            "Call",
            {
                "fields": (
                    "tool",
                    "rule",
                    "risk_level",
                    "invocation_link",
                    "requester",
                    "reason",
                    "arguments",
                )
            },
        ),
        (
            "Request",
            {
                "fields": (
                    "prompt",
                    "context_json",
                    "options_json",
                    "approver_group",
                    "approvals_required",
                    ("created_at", "expires_at", "decided_at"),
                    ("escalation_group", "escalate_at", "escalated_at"),
                    "delegates",
                )
            },
        ),
        ("Result", {"fields": ("invocation_status", "result", "error")}),
    )
    readonly_fields = (
        "risk_level",
        "reason",
        "title",
        "kind",
        "status",
        "outcome",
        "answer",
        "approvals",
        "tool",
        "rule",
        "invocation_link",
        "requester",
        "arguments",
        "prompt",
        "context_json",
        "options_json",
        "approver_group",
        "approvals_required",
        "created_at",
        "expires_at",
        "decided_at",
        "escalation_group",
        "escalate_at",
        "escalated_at",
        "delegates",
        "invocation_status",
        "result",
        "error",
    )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("invocation", "created_by", "approver_group")
            .annotate(approval_count=APPROVAL_COUNT)
        )

    def changelist_view(self, request, extra_context=None):
        # Overdue requests are expired in bulk right after this read (a task), not by it.
        human_requests_expire_soon()
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        try:  # this request, if overdue, is expired before it is shown
            human_requests_expire(request_id=uuid.UUID(unquote(object_id)))
        except ValueError:
            pass  # not a request's id: the admin answers it as unknown
        extra_context = {
            **(extra_context or {}),
            "can_respond": self.has_respond_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # Permissions: reviewers see the queue; nobody adds, edits or deletes requests by hand.

    def has_respond_permission(self, request) -> bool:
        return request.user.has_perm(RESPOND_PERMISSION)

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) or self.has_respond_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # Columns and read-only fields.

    @admin.display(description="risk", ordering="risk_level")
    def risk(self, obj):
        if obj.kind != HumanRequest.Kind.APPROVAL:
            return None
        return format_html(
            '<span class="badge badge-risk-{}">{}</span>',
            obj.risk_level,
            obj.get_risk_level_display(),
        )

    @admin.display(description="reviewer page")
    def page_link(self, obj):
        url = reverse("hitl:request", kwargs={"request_id": obj.pk})
        return format_html('<a href="{}">open</a>', url)

    @admin.display(description="tool", ordering="invocation__tool_name")
    def tool(self, obj):
        return obj.invocation.tool_name if obj.invocation_id else None

    @admin.display(description="rule")
    def rule(self, obj):
        """The approval rule that asked for this approval; empty: the tool's policy did."""
        return (obj.invocation.rule or "the tool's policy") if obj.invocation_id else None

    @admin.display(description="requester", ordering="created_by__email")
    def requester(self, obj):
        return obj.created_by.email if obj.created_by_id else None

    @admin.display(description="approvals")
    def approvals(self, obj):
        if obj.kind != HumanRequest.Kind.APPROVAL:
            return None
        return f"{approvals_count(obj)} of {obj.approvals_required}"

    @admin.display(description="handed to")
    def delegates(self, obj):
        lines = [
            f"{d.delegate.email} by {d.delegated_by.email if d.delegated_by else '(deleted)'}"
            for d in obj.delegations.select_related("delegate", "delegated_by")
        ]
        return ", ".join(lines) or self.get_empty_value_display()

    @admin.display(description="invocation")
    def invocation_link(self, obj):
        if not obj.invocation_id:
            return self.get_empty_value_display()
        return self._admin_link(obj.invocation, str(obj.invocation_id))

    @admin.display(description="invocation status")
    def invocation_status(self, obj):
        if not obj.invocation_id:
            return self.get_empty_value_display()
        return obj.invocation.get_status_display()

    @admin.display(description="arguments")
    def arguments(self, obj):
        return self._json_field(obj.invocation.arguments if obj.invocation_id else None)

    @admin.display(description="context")
    def context_json(self, obj):
        return self._json_field(obj.context or None)

    @admin.display(description="options")
    def options_json(self, obj):
        return self._json_field(obj.options)

    @admin.display(description="result")
    def result(self, obj):
        return self._json_field(obj.invocation.result if obj.invocation_id else None)

    @admin.display(description="error")
    def error(self, obj):
        return self._json_field(obj.invocation.error if obj.invocation_id else None)

    def _json_field(self, value):
        if value is None:
            return self.get_empty_value_display()
        return format_html("<pre>{}</pre>", _pretty_json(value))

    def _admin_link(self, obj, label):
        opts = obj._meta
        try:
            url = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change",
                args=[quote(obj.pk)],
                current_app=self.admin_site.name,
            )
        except NoReverseMatch:
            return label
        return format_html('<a href="{}">{}</a>', url, label)

    # Decisions: the list's actions and the change page's buttons share one flow.

    @admin.action(permissions=["respond"], description="Approve selected requests")
    def approve_selected(self, request, queryset):
        return self._decide_selected(request, queryset, Decision.APPROVE, "approve_selected")

    @admin.action(permissions=["respond"], description="Reject selected requests")
    def reject_selected(self, request, queryset):
        return self._decide_selected(request, queryset, Decision.REJECT, "reject_selected")

    def _decide_selected(self, request, queryset, decision, action):
        # The reviewer has confirmed: decide, and return None to show the list again.
        if request.POST.get("post") == "yes":
            self._decide(request, list(queryset), decision)
            return None
        return self._confirmation(request, list(queryset), decision, action=action)

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/approve/",
                self.admin_site.admin_view(self.decide_view),
                {"decision": Decision.APPROVE},
                name=f"{prefix}_approve",
            ),
            path(
                "<path:object_id>/reject/",
                self.admin_site.admin_view(self.decide_view),
                {"decision": Decision.REJECT},
                name=f"{prefix}_reject",
            ),
            path(
                "<path:object_id>/delegate/",
                self.admin_site.admin_view(self.delegate_view),
                name=f"{prefix}_delegate",
            ),
            *super().get_urls(),
        ]

    def decide_view(self, request, object_id, decision):
        """One request's confirmation page; on ``post=yes``, the decision and a redirect."""
        if not self.has_respond_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if request.method == "POST" and request.POST.get("post") == "yes":
            self._decide(request, [obj], decision)
            return self._back_to(obj)
        return self._confirmation(request, [obj], decision)

    def _back_to(self, obj) -> HttpResponseRedirect:
        """To the request's page in the admin."""
        opts = self.opts
        return HttpResponseRedirect(
            reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change",
                args=[quote(obj.pk)],
                current_app=self.admin_site.name,
            )
        )

    def delegate_view(self, request, object_id):
        """A form to hand one request to a colleague; on POST, the service and a redirect to
        the request (its refusal, if any, shown as a message)."""
        if not self.has_respond_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        candidates = delegate_candidates(request=obj, by=request.user)
        form = DelegateForm(request.POST or None, candidates=candidates)
        if request.method == "POST" and form.is_valid():
            to = form.cleaned_data["to"]
            try:
                human_request_delegate(
                    request_id=obj.pk, by=request.user, to=to, comment=form.cleaned_data["comment"]
                )
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"Handed to {to.email}.", messages.SUCCESS)
            return self._back_to(obj)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Hand “{obj}” to a colleague",
            "crumb": "Hand to a colleague",
            "opts": self.opts,
            "original": obj,
            "form": form,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "hitl/admin/delegate.html", context)

    def _decide(self, request, requests, decision):
        """Responds to each request through the service (with the grant the confirmation
        page offers an approval); reports successes and refusals."""
        try:
            grant = GrantTerms.of(
                request.POST.get("grant_hours"), request.POST.get("grant_arguments") or "exact"
            )
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        outcome = human_requests_respond(
            request_ids=[obj.pk for obj in requests],
            responder=request.user,
            decision=decision,
            comment=request.POST.get("comment", "").strip(),
            grant=grant,
        )
        levels = {"success": messages.SUCCESS, "error": messages.ERROR}
        for level, text in outcome.messages(decision):
            self.message_user(request, text, levels[level])

    def _confirmation(self, request, requests, decision, action=""):
        verb = "Approve" if decision == Decision.APPROVE else "Reject"
        single = None if action else requests[0]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb} {requests_phrase(len(requests))}" if action else f"{verb} “{single}”",
            "subtitle": None,
            "opts": self.opts,
            "media": self.media,
            "verb": verb,
            "crumb": verb,
            "decision": decision,
            "action": action,
            "original": single,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "queryset": requests,
            "may_grant": decision == Decision.APPROVE
            and all(obj.invocation_id and obj.approvals_required == 1 for obj in requests),
            "grant_hours_offered": GRANT_HOURS_OFFERED,
            "grant_tool": ", ".join(
                sorted({obj.invocation.tool_name for obj in requests if obj.invocation_id})
            ),
            "items": [
                {
                    "request": obj,
                    "tool": obj.invocation.tool_name if obj.invocation_id else "",
                    "arguments": _pretty_json(obj.invocation.arguments)
                    if obj.invocation_id
                    else "",
                    "approvals": self.approvals(obj),
                }
                for obj in requests
            ],
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.confirmation_template, context)


@admin.register(ReviewerSettings)
class ReviewerSettingsAdmin(admin.ModelAdmin):
    """How each reviewer is notified; reviewers set their own on /hitl/settings/."""

    list_display = ("user", "notify_via", "chat_format")
    list_filter = ("notify_via",)
    search_fields = ("user__email",)
    autocomplete_fields = ("user",)


class GrantFilter(admin.SimpleListFilter):
    """Rules written in the admin, or grants made by reviewers (live, expired, revoked)."""

    title = "kind"
    parameter_name = "grants"

    def lookups(self, request, model_admin):
        return [
            ("rules", "Rules"),
            ("all", "Grants"),
            ("live", "Grants: live"),
            ("expired", "Grants: expired"),
            ("revoked", "Grants: revoked"),
        ]

    def queryset(self, request, queryset):
        now = timezone.now()
        grants = queryset.filter(caller__isnull=False)
        return {
            "rules": queryset.filter(caller=None),
            "all": grants,
            "live": grants.filter(revoked_at=None, expires_at__gt=now),
            "expired": grants.filter(revoked_at=None, expires_at__lte=now),
            "revoked": grants.exclude(revoked_at=None),
        }.get(self.value(), queryset)


GRANT_FIELDS = (
    "caller",
    "caller_token",
    "arguments_digest",
    "expires_at",
    "granted_by",
    "granted_from",
    "revoked_at",
    "revoked_by",
)


@admin.register(ApprovalRule)
class ApprovalRuleAdmin(admin.ModelAdmin):
    """The approval policy's rules, in the order they are tried (edit positions in the
    list). Conditions are JSON checked against ``hitl.conditions`` when saved: bad data is
    refused with the field's error (the model's ``clean``).

    Grants (``hitl.grants``) are listed here too (the "kind" filter): made by reviewers
    when approving, read-only here, ended with the "revoke" action, which records who."""

    change_list_template = "hitl/admin/rule_change_list.html"
    list_display = (
        "name",
        "tool_label",
        "outcome",
        "position",
        "enabled",
        "grant_state",
        "audit_only",
        "updated_at",
    )
    list_editable = ("position", "enabled")
    list_filter = (GrantFilter, "outcome", "enabled", "audit_only", "tool_name")
    search_fields = ("name", "tool_name", "caller__email")
    ordering = ("position", "id")
    list_select_related = ("revoked_by",)
    actions = ["revoke_grants"]
    fieldsets = (
        (
            None,
            {"fields": ("name", "tool_name", "position", "enabled", "audit_only", "conditions")},
        ),
        ("Outcome", {"fields": ("outcome", "deny_message")}),
        (
            "Approval (empty fields: the tool's policy's)",
            {
                "fields": (
                    "approver_group",
                    "approvals_required",
                    "approval_timeout_seconds",
                    "risk_level",
                )
            },
        ),
        ("Grant (made by a reviewer when approving)", {"fields": GRANT_FIELDS}),
        (
            "Escalation (approval): undecided in time, the backup group may decide too",
            {"fields": ("escalate_after_seconds", "escalation_group")},
        ),
    )
    readonly_fields = GRANT_FIELDS

    def get_urls(self):
        return [
            path(
                "audit-only-report/",
                self.admin_site.admin_view(self.audit_report_view),
                name="hitl_approvalrule_audit_report",
            ),
            *super().get_urls(),
        ]

    def audit_report_view(self, request):
        """Per rule, the calls of a period that its audit-only mode would have sent for
        approval or denied, each count linking to those calls in the audit log. Needs the
        permission to view invocations."""
        if not request.user.has_perm(INVOCATION_VIEW_PERMISSION):
            raise PermissionDenied
        form = ReportPeriodForm(request.GET, today=timezone.localdate())
        start, end = form.period()
        since, until = period_bounds(start, end)
        changelist = reverse("admin:tools_toolinvocation_changelist")
        period = {"created_at__gte": since.isoformat(), "created_at__lt": until.isoformat()}
        rows = [
            {
                "row": row,
                "link": f"{changelist}?{urlencode({'audit_rule': row.rule_id, **period})}",
            }
            for row in audit_only_report(start=start, end=end)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Audit-only rules: what they would have required",
            "crumb": "Audit-only report",
            "opts": self.opts,
            "form": form,
            "start": start,
            "end": end,
            "rows": rows,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "hitl/admin/audit_report.html", context)

    @admin.display(description="Tool", ordering="tool_name")
    def tool_label(self, obj: ApprovalRule) -> str:
        return obj.tool_name or "every tool"

    @admin.display(description="Grant")
    def grant_state(self, obj: ApprovalRule) -> str:
        if not obj.is_grant:
            return "—"
        if obj.revoked_at is not None:
            return f"revoked by {obj.revoked_by.email if obj.revoked_by_id else '?'}"
        if obj.expires_at <= timezone.now():
            return "expired"
        return f"live until {timezone.localtime(obj.expires_at):%Y-%m-%d %H:%M}"

    @admin.action(permissions=["change"], description="Revoke selected grants")
    def revoke_grants(self, request, queryset):
        try:
            count = grants_revoke(grants=queryset, by=request.user)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, f"Revoked {count} grant{'' if count == 1 else 's'}.")
