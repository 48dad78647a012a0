from django.apps import AppConfig
from django.conf import settings


class McpTransportConfig(AppConfig):
    name = "mcp_transport"
    verbose_name = "MCP transport"

    def ready(self):
        from django.db.models.signals import post_save

        from mcp_transport import features, receivers  # noqa: F401  (resources, prompts, push)
        from mcp_transport.sessions import auth_cache_clear
        from users.models import ApiToken, User

        # A revoked token or a deactivated user must not live on in the auth cache.
        post_save.connect(auth_cache_clear, sender=ApiToken)
        post_save.connect(auth_cache_clear, sender=User)

        if settings.QMCP_CONFORMANCE_FIXTURES:
            from mcp_transport import conformance  # noqa: F401
