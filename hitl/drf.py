"""/api/human-requests: the approval queue, with ``approve``, ``reject`` and ``respond``.

Deciding goes through ``human_request_respond``, which checks the reviewer (403) and the
request's state (409), exactly as /v1/human/responses and the reviewer pages.
"""

from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from hitl.grants import GRANT_HOURS_MAX, GRANT_HOURS_MIN, GrantTerms
from hitl.models import OPTION_MAX_LENGTH, HumanRequest, HumanResponse
from hitl.rules import approvals_count
from hitl.selectors import human_request_get, human_request_visible_get, human_request_visible_list
from hitl.services import human_request_respond
from users.models import ApiToken

Scope = ApiToken.Scope
READ_SCOPES = (Scope.HITL_RESPOND, Scope.TOOLS_READ)
Decision = HumanResponse.Decision


class HumanResponseSerializer(serializers.ModelSerializer):
    responder = serializers.EmailField(source="responder.email")

    class Meta:
        model = HumanResponse
        fields = ["responder", "decision", "option", "answer", "comment", "created_at"]


class HumanRequestSerializer(serializers.ModelSerializer):
    """/v1's HumanRequestOut."""

    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    approver_group = serializers.CharField(
        source="approver_group.name", allow_null=True, default=None
    )
    approvals = serializers.SerializerMethodField()

    class Meta:
        model = HumanRequest
        fields = [
            "id",
            "kind",
            "title",
            "prompt",
            "context",
            "options",
            "status",
            "outcome",
            "answer",
            "created_by",
            "approvals_required",
            "approvals",
            "approver_group",
            "invocation_id",
            "created_at",
            "expires_at",
            "decided_at",
        ]

    def get_approvals(self, obj: HumanRequest) -> int:
        return approvals_count(obj)


class InvocationSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    tool = serializers.CharField(source="tool_name")
    status = serializers.CharField()


class HumanRequestDetailSerializer(HumanRequestSerializer):
    responses = HumanResponseSerializer(many=True)
    invocation = InvocationSummarySerializer(allow_null=True)

    class Meta(HumanRequestSerializer.Meta):
        fields = [*HumanRequestSerializer.Meta.fields, "responses", "invocation"]


class HumanRequestViewSet(viewsets.ReadOnlyModelViewSet):
    """Pending first, then oldest first; ``?status=`` filters. Staff who may read the
    admin's queue see every request, others their own. Reviewers decide with the POST
    actions; each answers the updated request."""

    required_scopes = {
        "list": READ_SCOPES,
        "retrieve": READ_SCOPES,
        "approve": (Scope.HITL_RESPOND,),
        "reject": (Scope.HITL_RESPOND,),
        "respond": (Scope.HITL_RESPOND,),
    }

    class DecisionInputSerializer(serializers.Serializer):
        comment = serializers.CharField(required=False, allow_blank=True, default="")

    class ApproveInputSerializer(DecisionInputSerializer):
        """An approval, with an optional grant (``hitl.grants``), as /v1/human/responses."""

        grant_hours = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=GRANT_HOURS_MIN,
            max_value=GRANT_HOURS_MAX,
            help_text="Also let this caller run this tool for this many hours without asking.",
        )
        grant_arguments = serializers.ChoiceField(
            choices=["exact", "any"], required=False, default="exact"
        )

    class RespondInputSerializer(serializers.Serializer):
        decision = serializers.ChoiceField(choices=Decision.choices)
        option = serializers.CharField(
            required=False, allow_blank=True, default="", max_length=OPTION_MAX_LENGTH
        )
        answer = serializers.CharField(required=False, allow_blank=True, default="")
        comment = serializers.CharField(required=False, allow_blank=True, default="")

    def get_serializer_class(self):
        if self.action == "approve":
            return self.ApproveInputSerializer
        if self.action == "reject":
            return self.DecisionInputSerializer
        if self.action == "respond":
            return self.RespondInputSerializer
        if self.action == "list":
            return HumanRequestSerializer
        return HumanRequestDetailSerializer

    def get_queryset(self):
        return human_request_visible_list(
            principal=self.request.auth, status=self.request.query_params.get("status") or None
        )

    def get_object(self) -> HumanRequest:
        return human_request_visible_get(principal=self.request.auth, request_id=self.kwargs["pk"])

    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """Approves the request (an approved tool call then runs as its caller), with a
        grant when ``grant_hours`` is given."""
        return self._respond(request, pk, self.ApproveInputSerializer, Decision.APPROVE)

    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Rejects the request; the comment becomes the reason a gated call receives."""
        return self._respond(request, pk, self.DecisionInputSerializer, Decision.REJECT)

    @action(detail=True, methods=["post"])
    def respond(self, request, pk=None):
        """Any response: ``approve``, ``reject``, or ``answer`` (with ``option`` or
        ``answer``) for a question."""
        return self._respond(request, pk, self.RespondInputSerializer)

    def _respond(self, request, pk, input_serializer, decision: str | None = None) -> Response:
        serializer = input_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if decision is not None:
            data["decision"] = decision
        if "grant_hours" in data:
            data["grant"] = GrantTerms.of(data.pop("grant_hours"), data.pop("grant_arguments"))
        human_request = human_request_respond(request_id=pk, responder=request.user, **data)
        human_request = human_request_get(request_id=human_request.pk, expire=False)
        return Response(HumanRequestDetailSerializer(human_request).data)
