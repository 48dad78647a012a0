"""The browsable DRF API at /api/: authentication, scopes, pagination, errors and routes.

Every view is a thin shell over the same services and selectors as /v1, MCP and the admin.
Errors come back as /v1's ``{"error": {"code", "message", "details"}}``, with one status
per case, as /v1 answers:

- 400 ``malformed_json`` (a body that does not parse), ``bad_request`` (say, an unknown
  status filter);
- 401 ``unauthenticated`` (no credentials, or an invalid, revoked or expired token);
- 403 ``missing_scope`` (the token lacks the action's scope), ``forbidden`` (not a
  reviewer, a staff account, CSRF);
- 404 ``not_found``; 405 ``method_not_allowed``; 409 ``conflict`` (already decided),
  ``precondition_failed`` (a gated call whose preview shows it cannot succeed);
- 422 ``invalid`` (a request that fails its serializer: DRF's ValidationError) and
  ``invalid_arguments`` (a tool's own argument validation).
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    get_authorization_header,
)
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.response import Response

from qmcp_site.errors import ApplicationError, error_body
from users.principals import Principal
from users.services import bearer_authenticate

logger = logging.getLogger(__name__)

AUTHENTICATE_HEADER = 'Bearer realm="qmcp"'


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <token>`` for programs; ``request.auth`` is the Principal.

    Listed first, so an anonymous request gets 401 with a ``WWW-Authenticate`` header.
    """

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send 'Authorization: Bearer <token>'.")
        try:
            principal = bearer_authenticate(secret=parts[1].decode("latin-1"))
        except ApplicationError as exc:
            raise exceptions.AuthenticationFailed(exc.message) from exc
        return principal.user, principal

    def authenticate_header(self, request):
        return AUTHENTICATE_HEADER


class SessionPrincipalAuthentication(SessionAuthentication):
    """DRF's session login (with its CSRF check); ``request.auth`` is the Principal.

    A person logged in has every scope; the services still check their permissions.
    """

    def authenticate(self, request):
        found = super().authenticate(request)
        if found is None:
            return None
        return found[0], Principal.for_user(found[0])


class MissingScope(exceptions.PermissionDenied):
    default_code = "missing_scope"

    def __init__(self, scopes: tuple[str, ...]):
        names = "' or '".join(scopes)
        super().__init__(f"This token lacks the '{names}' scope.")
        self.scopes = scopes


class ScopePermission(BasePermission):
    """An authenticated principal holding one of the action's scopes.

    A view lists them as ``required_scopes = {action: (scope, ...)}``; an action not
    listed (the API root, OPTIONS) needs only authentication.
    """

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        principal = request.auth
        if not isinstance(principal, Principal):
            principal = Principal.for_user(request.user)
        scopes = getattr(view, "required_scopes", {}).get(getattr(view, "action", None), ())
        if scopes and not any(principal.has_scope(scope) for scope in scopes):
            raise MissingScope(tuple(str(scope) for scope in scopes))
        return True


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


# DRF's exceptions and the error code each becomes; ValidationError answers 422, as /v1.
ERROR_CODES = [
    (exceptions.ParseError, "malformed_json"),
    (exceptions.NotAuthenticated, "unauthenticated"),
    (exceptions.AuthenticationFailed, "unauthenticated"),
    (MissingScope, "missing_scope"),
    (exceptions.PermissionDenied, "forbidden"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "throttled"),
    (exceptions.ValidationError, "invalid"),
]


def exception_handler(exc, context):
    """Every error of /api/ as ``{"error": {"code", "message", "details"}}``.

    ApplicationError keeps its code and status; DRF's own errors (and Django's Http404
    and PermissionDenied, which DRF's handler converts) get the codes above.
    """
    if isinstance(exc, ApplicationError):
        response = Response(error_body(exc.code, exc.message, exc.details), exc.http_status)
        if exc.http_status == 401:
            response["WWW-Authenticate"] = AUTHENTICATE_HEADER
        return response
    # Imported here: rest_framework.views reads these settings, which name this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in /api/", exc_info=exc)
        return Response(
            error_body("internal_error", "Internal server error."),
            status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    code = next((code for cls, code in ERROR_CODES if isinstance(exc, cls)), "error")
    details = {}
    if isinstance(exc, exceptions.ValidationError):
        response.status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
        message = "The request's data is invalid."
        details = {"errors": exc.detail}
    else:
        message = str(exc.detail)
    if isinstance(exc, MissingScope):
        details = {"scopes": list(exc.scopes)}
    response.data = error_body(code, message, details)
    return response


def build_router():
    """The /api/ routes (a DefaultRouter); the views are imported here, once URLs load."""
    from rest_framework.routers import DefaultRouter

    from hitl.drf import HumanRequestViewSet
    from tools.drf import InvocationViewSet, ToolViewSet
    from users.drf import UserViewSet

    router = DefaultRouter()
    router.register("users", UserViewSet, basename="user")
    router.register("invocations", InvocationViewSet, basename="invocation")
    router.register("human-requests", HumanRequestViewSet, basename="human-request")
    router.register("tools", ToolViewSet, basename="tool")
    return router
