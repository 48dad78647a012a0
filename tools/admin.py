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


@admin.register(ToolInvocation)
class ToolInvocationAdmin(ReadOnlyAdmin):
    """The audit log: read-only for everyone, superusers included."""

    list_display = ("created_at", "tool_name", "status", "principal_label", "via", "duration_ms")
    list_filter = ("status", "via", "mcp_protocol_version", "tool_name")
    search_fields = (
        "=id",
        "tool_name",
        "principal_label",
        "request_id",
        "correlation_id",
        "mcp_session_id",
    )
    date_hierarchy = "created_at"
    list_select_related = ("principal",)
