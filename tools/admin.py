from django.contrib import admin

from qmcp_site.readonly_admin import ReadOnlyAdmin
from tools.models import ToolInvocation, ToolPolicy


@admin.register(ToolPolicy)
class ToolPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "tool_name",
        "enabled",
        "requires_approval",
        "approvals_required",
        "approver_group",
        "approval_timeout_seconds",
        "risk_level",
        "updated_at",
    )
    list_editable = ("enabled", "requires_approval")
    list_filter = ("enabled", "requires_approval", "risk_level")
    search_fields = ("tool_name",)
    readonly_fields = ("tool_name", "updated_at")

    def has_add_permission(self, request):
        # Policies come from the tool registry, one per registered tool.
        return False


class AuditOnlyRuleFilter(admin.SimpleListFilter):
    """The calls an audit-only rule matched (``?audit_rule=<rule id>``, the link of the
    audit-only report); shown only while it filters."""

    title = "audit-only rule"
    parameter_name = "audit_rule"

    def lookups(self, request, model_admin):
        value = request.GET.get(self.parameter_name, "")
        return [(value, f"#{value}")] if value.isdigit() else []

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            return queryset.filter(would_require__rule_id=int(self.value()))
        return queryset


@admin.register(ToolInvocation)
class ToolInvocationAdmin(ReadOnlyAdmin):
    """The audit log: read-only for everyone, superusers included."""

    list_display = ("created_at", "tool_name", "status", "principal_label", "via", "duration_ms")
    list_filter = ("status", "via", "mcp_protocol_version", "tool_name", AuditOnlyRuleFilter)
    search_fields = (
        "=id",
        "tool_name",
        "principal_label",
        "request_id",
        "correlation_id",
        "mcp_session_id",
        "rule",  # "grant #12 " finds the calls a grant let through
    )
    date_hierarchy = "created_at"
    list_select_related = ("principal",)
