"""ASGI entry point: MCP at /mcp (and /mcp/, no redirect), Django for everything else, and
the reviewer queue's websocket at /ws/hitl/queue/ (logged-in staff, same-site origins)."""

import os

from django.core.asgi import get_asgi_application

from qmcp_site import slow_readers
from qmcp_site.daphne_tuning import tune

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "qmcp_site.settings")
django_asgi_app = get_asgi_application()
tune()
slow_readers.install()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from hitl.consumers import QueueConsumer  # noqa: E402
from mcp_transport.consumers import McpConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                re_path(r"^mcp/?$", McpConsumer.as_asgi()),
                re_path(r"", django_asgi_app),
            ]
        ),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/hitl/queue/", QueueConsumer.as_asgi())]))
        ),
    }
)
