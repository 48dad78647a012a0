"""Structured logs and request tracing.

Every HTTP request gets an ``X-Request-ID`` (taken from the client when it is sane, made
otherwise) and an ``X-Correlation-ID`` (the client's, or the request id); both are bound to
the structlog context, stored on the request, and echoed back.
"""

import re
import uuid

import structlog

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def clean_id(value: str | None) -> str:
    """The given id when it is a sane token, a fresh one otherwise."""
    if value and _SAFE_ID.match(value):
        return value
    return uuid.uuid4().hex


def configure_structlog(*, json: bool) -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = clean_id(request.headers.get("X-Request-ID"))
        request.correlation_id = clean_id(
            request.headers.get("X-Correlation-ID") or request.request_id
        )
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request.request_id, correlation_id=request.correlation_id
        )
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        response["X-Correlation-ID"] = request.correlation_id
        return response
