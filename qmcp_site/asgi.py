"""ASGI entry point: MCP at /mcp (and /mcp/, no redirect), Django for everything else, and
the reviewer queue's websocket at /ws/hitl/queue/ (logged-in staff, same-site origins)."""

import os

from django.core.asgi import get_asgi_application

from qmcp_site import slow_readers, sqlite_checkpoints
from qmcp_site.daphne_tuning import tune

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qmcp_site.settings")
django_asgi_app = get_asgi_application()
tune()
slow_readers.install()
sqlite_checkpoints.start()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from hitl.consumers import QueueConsumer  # noqa: E402
from mcp_transport.consumers import McpConsumer  # noqa: E402
from qmcp_site import gc_tuning  # noqa: E402

MCP_PATHS = frozenset({"/mcp", "/mcp/"})
mcp_app = McpConsumer.as_asgi()
others = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/hitl/queue/", QueueConsumer.as_asgi())]))
        ),
    }
)


gc_tuning.tune()  # last: everything the application loads is loaded


async def application(scope, receive, send):
    """MCP's path to its consumer at once (channels' routers would match a regular
    expression and copy the scope twice on every call), everything else through them."""
    if scope["type"] == "http" and scope["path"][len(scope.get("root_path", "")) :] in MCP_PATHS:
        return await mcp_app(scope, receive, send)
    return await others(scope, receive, send)
