from django.apps import AppConfig
from django.conf import settings


class McpTransportConfig(AppConfig):
    name = "mcp_transport"
    verbose_name = "MCP transport"

    def ready(self):
        from mcp_transport import features  # noqa: F401  (QMCP's resources and prompts)

        if settings.QMCP_CONFORMANCE_FIXTURES:
            from mcp_transport import conformance  # noqa: F401
