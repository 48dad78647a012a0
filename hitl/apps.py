from django.apps import AppConfig


class HitlConfig(AppConfig):
    name = "hitl"
    verbose_name = "Human in the loop"

    def ready(self):
        from hitl import receivers  # noqa: F401
