"""Connects hitl to tools: a gated call gets its approval request in the same transaction."""

from django.dispatch import receiver

from tools.models import ToolInvocation
from tools.signals import invocation_gated


@receiver(invocation_gated, sender=ToolInvocation, dispatch_uid="hitl_gate_invocation")
def gate_invocation(sender, invocation, policy, preview=None, reason="", **kwargs):
    from hitl.services import human_request_for_invocation

    human_request_for_invocation(
        invocation=invocation, policy=policy, preview=preview, reason=reason
    )
