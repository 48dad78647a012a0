"""/api/users: the managed users, read through the selectors and written through the user
tools (``add_user``, ``update_user``, ``delete_user``), so every write is audited and a
delete follows the tool's approval policy. Reading profiles needs the ``users:read`` scope
and leaves an audit row (``users.list``, ``users.retrieve``) naming the ids read. Staff and
superuser accounts are never listed, read or changed (403), as the tools refuse them."""

from rest_framework import serializers, status, viewsets
from rest_framework.response import Response

from qmcp_site.errors import ApplicationError
from tools.drf import body_arguments, invocation_response, invoke
from tools.models import ToolInvocation
from users import selectors
from users.models import ApiToken, User
from users.services import PROFILE_FIELDS, user_profiles_read

Scope = ApiToken.Scope


class UserViewSet(viewsets.GenericViewSet):
    """Users the user tools manage. ``?search=`` keeps those whose name, surname or email
    contains every word. PUT and PATCH both change only the fields sent."""

    required_scopes = {
        "list": (Scope.USERS_READ,),
        "retrieve": (Scope.USERS_READ,),
        "create": (Scope.TOOLS_CALL,),
        "update": (Scope.TOOLS_CALL,),
        "partial_update": (Scope.TOOLS_CALL,),
        "destroy": (Scope.TOOLS_CALL,),
    }

    class OutputSerializer(serializers.ModelSerializer):
        salary = serializers.FloatField(allow_null=True)

        class Meta:
            model = User
            fields = ["id", *PROFILE_FIELDS]

    class InputSerializer(serializers.Serializer):
        """The browsable API's form. The body is validated by the tool itself (422
        ``invalid_arguments``), so a refused write is audited like any other call."""

        name = serializers.CharField(required=False)
        surname = serializers.CharField(required=False)
        email = serializers.EmailField(required=False)
        about_me = serializers.CharField(required=False, style={"base_template": "textarea.html"})
        phone = serializers.CharField(required=False)
        date_of_birth = serializers.DateField(required=False, allow_null=True)
        address = serializers.CharField(required=False)
        gender = serializers.ChoiceField(choices=User.Gender.choices, required=False)
        company = serializers.CharField(required=False)
        salary = serializers.FloatField(required=False, allow_null=True)

    def get_serializer_class(self):
        if self.action in ("create", "update", "partial_update"):
            return self.InputSerializer
        return self.OutputSerializer

    def get_queryset(self):
        return selectors.user_list(query=self.request.query_params.get("search", ""))

    def get_object(self) -> User:
        """The managed user of the URL: 404 if unknown, 403 for a staff account."""
        try:
            user_id = int(self.kwargs["pk"])
        except ValueError:
            raise ApplicationError(f"No user with id '{self.kwargs['pk']}'.", "not_found") from None
        return selectors.user_get_managed(user_id=user_id)

    def list(self, request):
        page = self._read(
            self.paginate_queryset(self.get_queryset()),
            "list",
            {"search": request.query_params.get("search", ""), "page": self.paginator.page.number},
        )
        return self.get_paginated_response(self.OutputSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        user = self.get_object()
        self._read([user], "retrieve", {"user_id": user.pk})
        return Response(self.OutputSerializer(user).data)

    def _read(self, users, action: str, arguments: dict):
        """``users`` (a page or one), audited as read; ``missing_scope`` without ``users:read``."""
        return user_profiles_read(
            principal=self.request.auth,
            users=list(users),
            action=action,
            arguments=arguments,
            via=ToolInvocation.Via.API,
            request_id=getattr(self.request, "request_id", ""),
            correlation_id=getattr(self.request, "correlation_id", ""),
        )

    def create(self, request):
        invocation = invoke(request, "add_user", lambda: body_arguments(request))
        if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
            return invocation_response(invocation)  # a policy now gates add_user too
        user = selectors.user_get_managed(user_id=invocation.result["structuredContent"]["id"])
        return self._written(invocation, user, status.HTTP_201_CREATED)

    def update(self, request, pk=None, partial=False):
        user = self.get_object()

        def arguments():
            found = body_arguments(request)  # parsed inside invoke: a bad body is audited
            return {**found, "user_id": user.pk} if isinstance(found, dict) else found

        invocation = invoke(request, "update_user", arguments)
        if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
            return invocation_response(invocation)
        return self._written(invocation, selectors.user_get_managed(user_id=user.pk))

    def partial_update(self, request, pk=None):
        return self.update(request, pk, partial=True)

    def destroy(self, request, pk=None):
        """204 once deleted; 202 with the invocation (its ``id`` and ``human_request_id``)
        while the delete waits for a reviewer's approval."""
        user = self.get_object()
        invocation = invoke(request, "delete_user", {"user_id": user.pk})
        if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
            response = invocation_response(invocation)
        else:
            response = Response(status=status.HTTP_204_NO_CONTENT)
        response["X-Invocation-ID"] = str(invocation.pk)
        return response

    def _written(self, invocation, user: User, code=status.HTTP_200_OK) -> Response:
        response = Response(self.OutputSerializer(user).data, status=code)
        response["X-Invocation-ID"] = str(invocation.pk)
        return response
