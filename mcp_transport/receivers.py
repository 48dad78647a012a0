"""Pushes changes to the MCP streams that wait for them, on any worker.

The end of a gated call goes to the streams waiting for it; a change of an invocation or of
the tool policies goes to the GET streams of the sessions subscribed to its resource
(``qmcp://invocations/{id}``, ``qmcp://tools``) and to the subscriptions/listen streams that
watch it, which send ``notifications/resources/updated``.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from hitl.models import HumanRequest
from hitl.signals import human_request_changed
from mcp_transport.sessions import sessions_subscribed
from mcp_transport.streams import invocation_group, resource_group, session_group
from tools.models import ToolInvocation, ToolPolicy
from tools.signals import invocation_finished

logger = logging.getLogger(__name__)

TOOLS_URI = "qmcp://tools"


def invocation_uri(invocation_id) -> str:
    return f"qmcp://invocations/{invocation_id}"


def _push(group: str, message: dict) -> None:
    try:
        async_to_sync(get_channel_layer().group_send)(group, message)
    except Exception:  # a lost push is covered by the streams' periodic re-read
        logger.warning("could not push %s to %s", message["type"], group, exc_info=True)


def resource_updated(uri: str) -> None:
    """Tells the streams that watch ``uri`` that it changed: the GET streams of the sessions
    subscribed to it, and the subscriptions/listen streams that named it.

    The sessions' subscriptions are read from the rows, so a subscription made on any worker
    counts from the moment its request was answered; a listen stream is in the uri's group
    from its acknowledgement on.
    """
    _push(resource_group(uri), {"type": "mcp.resource.updated", "uri": uri})
    for session_id in sessions_subscribed(uri=uri):
        _push(session_group(session_id), {"type": "mcp.resource.updated", "uri": uri})


@receiver(invocation_finished, sender=ToolInvocation, dispatch_uid="mcp_invocation_finished")
def push_invocation_finished(sender, invocation_id, **kwargs):
    _push(invocation_group(invocation_id), {"type": "invocation.finished"})
    resource_updated(invocation_uri(invocation_id))


@receiver(human_request_changed, sender=HumanRequest, dispatch_uid="mcp_request_decided")
def push_request_decided(sender, request_id, event, **kwargs):
    # An approval moves its call on (to running); the end of the call is pushed above.
    if event != "decided":
        return
    invocation_id = (
        HumanRequest.objects.filter(pk=request_id).values_list("invocation_id", flat=True).first()
    )
    if invocation_id is not None:
        resource_updated(invocation_uri(invocation_id))


@receiver(post_save, sender=ToolPolicy, dispatch_uid="mcp_policy_saved")
@receiver(post_delete, sender=ToolPolicy, dispatch_uid="mcp_policy_deleted")
def push_policy_changed(sender, **kwargs):
    transaction.on_commit(lambda: resource_updated(TOOLS_URI))
