from django.apps import AppConfig


class McpTransportConfig(AppConfig):
    name = "mcp_transport"
    verbose_name = "MCP transport"
