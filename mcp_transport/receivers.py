"""Pushes the end of a gated call to the MCP streams waiting for it, on any worker."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.dispatch import receiver

from tools.models import ToolInvocation
from tools.signals import invocation_finished

logger = logging.getLogger(__name__)


@receiver(invocation_finished, sender=ToolInvocation, dispatch_uid="mcp_invocation_finished")
def push_invocation_finished(sender, invocation_id, **kwargs):
    from mcp_transport.consumers import invocation_group

    try:
        async_to_sync(get_channel_layer().group_send)(
            invocation_group(invocation_id), {"type": "invocation.finished"}
        )
    except Exception:  # a lost push is covered by the streams' periodic re-read
        logger.warning("could not push the end of invocation %s", invocation_id, exc_info=True)
