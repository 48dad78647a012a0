from django.conf import settings
from django.http import JsonResponse

from qmcp_site.errors import error_body


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
