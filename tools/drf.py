"""/api/tools and /api/invocations: the browsable twins of /v1/tools and /v1/invocations."""

from typing import Any

from django.http import QueryDict
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from qmcp_site.errors import ApplicationError
from tools import selectors
from tools.models import ToolInvocation
from tools.services import tool_invocation_raise_failure, tool_invoke, tool_invoke_refuse
from users.models import ApiToken

Scope = ApiToken.Scope


class InvocationSerializer(serializers.ModelSerializer):
    """One audit record, with /v1's field names."""

    tool = serializers.CharField(source="tool_name")
    principal_id = serializers.IntegerField(allow_null=True)
    human_request_id = serializers.SerializerMethodField()

    class Meta:
        model = ToolInvocation
        fields = [
            "id",
            "tool",
            "status",
            "arguments",
            "result",
            "error",
            "principal_id",
            "principal_label",
            "via",
            "mcp_session_id",
            "mcp_protocol_version",
            "request_id",
            "correlation_id",
            "created_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "human_request_id",
        ]

    def get_human_request_id(self, obj: ToolInvocation) -> str | None:
        # The reverse one-to-one raises RelatedObjectDoesNotExist, an AttributeError.
        human_request = getattr(obj, "human_request", None)
        return str(human_request.pk) if human_request is not None else None


def body_arguments(request) -> Any:
    """The request body as tool arguments; ParseError (400 ``malformed_json``) when it
    does not parse, nesting too deep for the parser included.

    An HTML form from the browsable API arrives as a QueryDict: its blank fields are left
    out, so the tool sees only what was filled in.
    """
    try:
        data = request.data
    except RecursionError as exc:  # DRF's parser catches ValueError only
        raise ParseError("nested too deep.") from exc
    if isinstance(data, QueryDict):
        return {k: v for k, v in data.dict().items() if v != "" and k != "csrfmiddlewaretoken"}
    return data


def invoke(request, name: str, arguments: Any) -> ToolInvocation:
    """Calls a tool through ``tool_invoke`` as the request's principal, via ``api``.

    ``arguments`` may be a callable that parses the body: a body that does not parse is
    then recorded as a refused call. A tool that fails raises its error (with the
    invocation id in ``details``), as /v1.
    """
    call = {
        "name": name,
        "principal": request.auth,
        "via": ToolInvocation.Via.API,
        "request_id": getattr(request, "request_id", ""),
        "correlation_id": getattr(request, "correlation_id", ""),
    }
    try:
        arguments = arguments() if callable(arguments) else arguments
    except ParseError as exc:
        # Recorded like any refused call, as /v1 does.
        error = ApplicationError(f"Request body is not valid JSON: {exc.detail}", "malformed_json")
        tool_invoke_refuse(error=error, arguments=None, **call)
    return tool_invocation_raise_failure(tool_invoke(arguments=arguments, **call))


def invocation_response(invocation: ToolInvocation) -> Response:
    """200 with the invocation, or 202 when it waits for a reviewer."""
    code = (
        status.HTTP_202_ACCEPTED
        if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL
        else status.HTTP_200_OK
    )
    return Response(InvocationSerializer(invocation).data, status=code)


class ToolViewSet(viewsets.GenericViewSet):
    """Registered tools with their schemas and policy; ``invoke`` calls one."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    required_scopes = {
        "list": (Scope.TOOLS_READ,),
        "retrieve": (Scope.TOOLS_READ,),
        # No scope check here: tool_invoke checks tools:call and records the refusal.
    }

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        title = serializers.CharField(allow_null=True)
        description = serializers.CharField()
        input_schema = serializers.JSONField()
        output_schema = serializers.JSONField(allow_null=True)
        annotations = serializers.JSONField()
        policy = serializers.JSONField()

    class InvokeInputSerializer(serializers.Serializer):
        """No fields: the raw JSON body is the tool's arguments."""

    def get_serializer_class(self):
        if self.action == "invoke":
            return self.InvokeInputSerializer
        return self.OutputSerializer

    def get_queryset(self) -> list[dict[str, Any]]:
        """Every tool as a dict (a list: the registry is not a table)."""
        return [
            {
                "name": spec.name,
                "title": spec.title,
                "description": spec.description,
                "input_schema": spec.input_schema(),
                "output_schema": spec.output_schema(),
                "annotations": spec.annotations,
                "policy": _policy_out(spec, policy),
            }
            for spec, policy in selectors.tool_list(principal=self.request.auth)
        ]

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.OutputSerializer(page, many=True).data)

    def retrieve(self, request, name=None):
        found = [tool for tool in self.get_queryset() if tool["name"] == name]
        if not found:
            raise ApplicationError(f"Unknown tool '{name}'.", "unknown_tool", {"tool": name})
        return Response(self.OutputSerializer(found[0]).data)

    @action(detail=True, methods=["post"])
    def invoke(self, request, name=None):
        """Calls the tool with the JSON body as its arguments: 200 when it ran, 202 when it
        waits for approval."""
        return invocation_response(invoke(request, name, lambda: body_arguments(request)))


def _policy_out(spec, policy) -> dict[str, Any]:
    if policy is None:
        return {
            "enabled": True,
            "requires_approval": spec.requires_approval,
            "approvals_required": 1,
            "approval_timeout_seconds": 3600,
            "approver_group": None,
        }
    return {
        "enabled": policy.enabled,
        "requires_approval": policy.requires_approval,
        "approvals_required": policy.approvals_required,
        "approval_timeout_seconds": policy.approval_timeout_seconds,
        "approver_group": policy.approver_group.name if policy.approver_group else None,
    }


class InvocationViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log, newest first. Staff with the view permission on invocations see every
    call; others their own."""

    serializer_class = InvocationSerializer
    required_scopes = {"list": (Scope.TOOLS_READ,), "retrieve": (Scope.TOOLS_READ,)}

    class FilterSerializer(serializers.Serializer):
        tool = serializers.CharField(required=False)
        status = serializers.CharField(required=False)
        principal = serializers.IntegerField(required=False)
        created_after = serializers.DateTimeField(
            required=False, input_formats=["iso-8601", "%Y-%m-%d"]
        )
        created_before = serializers.DateTimeField(
            required=False, input_formats=["iso-8601", "%Y-%m-%d"]
        )

    def get_queryset(self):
        filters = self.FilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        return selectors.invocation_list(
            principal=self.request.auth,
            tool=data.get("tool"),
            status=data.get("status"),
            principal_id=data.get("principal"),
            created_after=data.get("created_after"),
            created_before=data.get("created_before"),
        ).select_related("human_request")

    def get_object(self):
        return selectors.invocation_get(
            principal=self.request.auth, invocation_id=self.kwargs["pk"]
        )
