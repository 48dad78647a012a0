from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


class ToolsConfig(AppConfig):
    name = "tools"
    verbose_name = "Tools and audit log"

    def ready(self):
        from django.utils.module_loading import autodiscover_modules

        from tools import builtin  # noqa: F401

        # Every app's tools.py registers its own tools.
        autodiscover_modules("tools")
        post_migrate.connect(_sync_policies, sender=self)

        from tools.models import ToolPolicy
        from tools.services import tool_policy_cache_clear

        post_save.connect(tool_policy_cache_clear, sender=ToolPolicy)
        post_delete.connect(tool_policy_cache_clear, sender=ToolPolicy)


def _sync_policies(**kwargs):
    from tools.services import tool_policies_sync

    tool_policies_sync()
