from django.apps import AppConfig


class HitlConfig(AppConfig):
    name = "hitl"
    verbose_name = "Human in the loop"

    def ready(self):
        from django.db.models.signals import post_delete, post_save

        from hitl import receivers  # noqa: F401
        from hitl.models import ApprovalRule
        from hitl.notifications import on_request_changed
        from hitl.rules import RULES, decide
        from hitl.signals import human_request_changed
        from tools.gate import TOOL_GATE

        TOOL_GATE.install(decide)
        post_save.connect(RULES.clear, sender=ApprovalRule, dispatch_uid="hitl_rules_saved")
        post_delete.connect(RULES.clear, sender=ApprovalRule, dispatch_uid="hitl_rules_deleted")
        human_request_changed.connect(on_request_changed, dispatch_uid="hitl_notifications")
