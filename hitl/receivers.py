"""Connects hitl to tools: a gated call gets its approval request in the same transaction,
the end of an approved call is announced as a change of its request, and its run tells the
agent of a reviewer's edits."""

from django.dispatch import receiver

from tools.models import ToolInvocation
from tools.signals import approved_run_notes, invocation_finished, invocation_gated


@receiver(invocation_gated, sender=ToolInvocation, dispatch_uid="hitl_gate_invocation")
def gate_invocation(sender, invocation, decision, preview=None, reason="", **kwargs):
    from hitl.services import human_request_for_invocation

    human_request_for_invocation(
        invocation=invocation, decision=decision, preview=preview, reason=reason
    )


@receiver(invocation_finished, sender=ToolInvocation, dispatch_uid="hitl_invocation_finished")
def announce_approved_call_finished(sender, invocation_id, **kwargs):
    """An approved call that ended (ran, failed, lost its worker) changes what its request
    shows: the open queues and request pages hear of it as the event ``finished``."""
    from hitl.models import HumanRequest
    from hitl.signals import human_request_changed

    request_id = (
        HumanRequest.objects.filter(
            invocation_id=invocation_id, outcome=HumanRequest.Outcome.APPROVED
        )
        .values_list("pk", flat=True)
        .first()
    )
    if request_id is not None:
        human_request_changed.send(sender=HumanRequest, request_id=request_id, event="finished")


@receiver(approved_run_notes, sender=ToolInvocation, dispatch_uid="hitl_edit_note")
def note_reviewer_edits(sender, invocation, **kwargs) -> str:
    """That a reviewer changed the arguments, from the stored request (a retry says it too)."""
    from hitl.services import edit_note

    return edit_note(invocation_id=invocation.pk)
