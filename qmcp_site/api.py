"""The /v1 REST API: one NinjaAPI, each app's router, and one translation of errors."""

import logging

from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from qmcp_site.errors import ApplicationError, error_body
from users.auth import BearerAuth

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="QMCP API",
    version="1",
    description=(
        "Tools, their audit log and the human approval queue. Authenticate with "
        "`Authorization: Bearer <token>`; errors come back as "
        '`{"error": {"code", "message", "details"}}`.'
    ),
    urls_namespace="v1",
    auth=BearerAuth(),
)


def error_response(request, status: int, code: str, message: str, details=None):
    response = api.create_response(request, error_body(code, message, details), status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="qmcp"'
    return response


@api.exception_handler(ApplicationError)
def on_application_error(request, exc: ApplicationError):
    return error_response(request, exc.http_status, exc.code, exc.message, exc.details)


@api.exception_handler(ValidationError)
def on_validation_error(request, exc: ValidationError):
    errors = [
        {"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors
    ]
    return error_response(
        request, 422, "invalid", "The request's parameters are invalid.", {"errors": errors}
    )


@api.exception_handler(AuthenticationError)
def on_authentication_error(request, exc: AuthenticationError):
    return error_response(
        request,
        401,
        "unauthenticated",
        "Authentication required: send 'Authorization: Bearer <token>'.",
    )


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    code = {400: "bad_request", 403: "forbidden", 404: "not_found"}.get(exc.status_code, "error")
    if str(exc).startswith("Cannot parse request body"):
        code = "malformed_json"
    return error_response(request, exc.status_code, code, str(exc))


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(Exception)
def on_unexpected(request, exc):
    logger.exception("unhandled error in /v1")
    return error_response(request, 500, "internal_error", "Internal server error.")


api.add_router("/tools", "tools.api.tools_router")
api.add_router("/invocations", "tools.api.invocations_router")
api.add_router("/human", "hitl.api.router")
api.add_router("/policy", "hitl.api.policy_router")
