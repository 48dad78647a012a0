"""The sync side of waiting for a gated call: its answer once it has ended, stored once for a
stream that waits on it, the "pending approval" answer, and a resumed stream's catch-up.

The async side (listening for the decision) is :mod:`mcp_transport.streams`.
"""

import json
from typing import Any

from django.db import IntegrityError, transaction

from mcp_transport.http import STATELESS_VERSION
from mcp_transport.jsonrpc import rpc_result
from mcp_transport.methods.results import stateless_result, tool_call_result
from mcp_transport.models import McpEvent
from mcp_transport.sessions import events_after, session_is_open
from tools.models import ToolInvocation


def call_result_if_final(*, invocation_id, rpc_id, version: str) -> dict[str, Any] | None:
    """The answer of a sessionless call that waited for a reviewer, once the call ended."""
    invocation = ToolInvocation.objects.filter(pk=invocation_id).first()
    if invocation is None or not invocation.is_final:
        return None
    return rpc_result(rpc_id, stateless_result("tools/call", tool_call_result(invocation, version)))


def stream_finish_if_decided(*, session_id: str, stream_id: str) -> McpEvent | None:
    """The final event of a stream that waits for a gated call, once the call has ended.

    Stores it the first time (whoever gets there first: the waiting task, or a client
    resuming on another worker); None while the call still waits.
    """
    head = (
        McpEvent.objects.select_related("invocation", "session")
        .filter(session_id=session_id, stream_id=stream_id, invocation__isnull=False)
        .first()
    )
    if head is None:
        return None
    final = McpEvent.objects.filter(session_id=session_id, stream_id=stream_id, final=True).first()
    if final is not None or not head.invocation.is_final:
        return final
    result = tool_call_result(head.invocation, head.session.protocol_version)
    data = json.dumps(rpc_result(head.rpc_id, result))
    last = (
        McpEvent.objects.filter(stream_id=stream_id).order_by("-seq").values_list("seq", flat=True)
    )
    try:
        with transaction.atomic():
            return McpEvent.objects.create(
                session_id=session_id, stream_id=stream_id, seq=last[0] + 1, data=data, final=True
            )
    except IntegrityError:
        return McpEvent.objects.filter(stream_id=stream_id, final=True).first()


def pending_result(*, invocation_id, rpc_id, version: str) -> dict[str, Any]:
    """The non-error "pending approval" reply for a client that cannot resume a stream."""
    invocation = ToolInvocation.objects.get(pk=invocation_id)
    result = tool_call_result(invocation, version)
    if version == STATELESS_VERSION:
        result = stateless_result("tools/call", result)
    return rpc_result(rpc_id, result)


def stream_catch_up(
    *, session_id: str, stream_id: str, seq: int, finish: bool
) -> tuple[list[McpEvent], bool]:
    """A resumed stream's stored events after ``seq`` (storing a decided wait's answer first
    when ``finish``), and whether its session is still open."""
    if not session_is_open(session_id=session_id):
        return [], False
    if finish:
        stream_finish_if_decided(session_id=session_id, stream_id=stream_id)
    return events_after(session_id=session_id, stream_id=stream_id, seq=seq), True
