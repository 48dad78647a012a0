from django.apps import AppConfig


class HitlConfig(AppConfig):
    name = "hitl"
    verbose_name = "Human in the loop"

    def ready(self):
        from hitl import receivers  # noqa: F401
        from hitl.notifications import on_request_changed
        from hitl.signals import human_request_changed

        human_request_changed.connect(on_request_changed, dispatch_uid="hitl_notifications")
