"""Two per-request costs of daphne's HTTP stack (Twisted) that QMCP does without.

- Twisted parses the Content-Type of every request with the ``email`` package, which
  costs about a tenth of the CPU of an MCP ``tools/call``. The parse is a pure function
  of the header's bytes, so it is cached.
- Twisted formats an access-log line for every request and hands it to its own log, which
  daphne sends nowhere at its default verbosity. Daphne writes its own access log
  (``--access-log``), so the Twisted line is not made.

:func:`tune` is called once, from ``qmcp_site.asgi``; it leaves alone what it cannot find.
"""

import functools


def tune() -> None:
    try:
        from daphne.http_protocol import HTTPFactory
        from twisted.web import http
    except ImportError:
        return
    parse = getattr(http, "_parseContentType", None)
    if parse is not None and not hasattr(parse, "cache_info"):
        http._parseContentType = functools.lru_cache(maxsize=64)(parse)
    HTTPFactory.log = _no_access_line


def _no_access_line(self, request) -> None:
    """Daphne's own access log records the request."""
