from django.conf import settings
from django.http import JsonResponse

from qmcp_site.errors import ApplicationError, error_body
from qmcp_site.storable import storable_check


class BodySizeLimitMiddleware:
    """Refuses a request whose declared body exceeds ``QMCP_MAX_BODY_BYTES`` with 413 JSON.

    Django would raise RequestDataTooBig later and answer 400; a client deserves to know the
    body was too large, before anything reads it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.QMCP_MAX_BODY_BYTES
        if length > limit and not request.path.startswith("/admin/"):
            return JsonResponse(
                error_body("payload_too_large", f"Request body exceeds {limit} bytes."),
                status=413,
            )
        return self.get_response(request)


class StorableQueryMiddleware:
    """Refuses a query string that holds a value no database can compare (a NUL
    character: PostgreSQL refuses it in any text parameter) with 400 JSON, before a filter
    or a search sends it to the database."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.META.get("QUERY_STRING"):
            try:
                storable_check(dict(request.GET.lists()), what="query string")
            except ApplicationError as exc:
                return JsonResponse(error_body("bad_request", exc.message, exc.details), status=400)
        return self.get_response(request)


class V1ErrorShapeMiddleware:
    """Gives /v1's own error shape to the two answers ninja's views never produce: an
    unknown path (Django's HTML 404) and a known path with a wrong method (ninja's
    plain-text 405, whose ``Allow`` header is kept).

    Every other /v1 error already comes from the NinjaAPI's handlers, as JSON.
    """

    PREFIX = "/v1"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        path = request.path
        if not (path == self.PREFIX or path.startswith(self.PREFIX + "/")):
            return response
        if response.status_code not in (404, 405) or response.get("Content-Type", "").startswith(
            "application/json"
        ):
            return response
        if response.status_code == 404:
            body = error_body("not_found", f"No /v1 endpoint at '{path}'.")
            return JsonResponse(body, status=404)
        allowed = sorted(m.strip() for m in response.get("Allow", "").split(",") if m.strip())
        body = error_body(
            "method_not_allowed",
            f"Method {request.method} is not allowed on '{path}'; use {', '.join(allowed)}.",
            {"allowed": allowed},
        )
        json_response = JsonResponse(body, status=405)
        json_response["Allow"] = ", ".join(allowed)
        return json_response
