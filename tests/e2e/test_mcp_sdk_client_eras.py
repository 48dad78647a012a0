"""The official MCP Python SDK 2.3.0 ``Client`` against a live QMCP in both eras.

In its default ``auto`` mode the client probes ``server/discover`` and speaks 2026-07-28,
statelessly; in ``legacy`` mode it runs the initialize handshake and gets 2025-11-25. Either
way it adds and finds a user, and waits on a gated ``delete_user`` until a reviewer approves.
In 2026-07-28 it also listens (``subscriptions/listen``) for a gated call's status.
"""

import threading
import time

import anyio
import httpx
import httpx2
import pytest
from django.contrib.auth.models import Permission
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ResourceUpdated

from hitl.models import HumanRequest
from hitl.services import human_request_respond
from mcp_transport.models import McpSession
from tests.e2e.mcp_helpers import text_of
from tests.factories import UserFactory, make_reviewer, make_token
from tools.models import ToolInvocation
from users.models import User

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The reviewer decides in this process: the server's wait sees it at its next re-read.
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


def approve_when_asked(reviewer, stop: threading.Event) -> threading.Thread:
    """A reviewer who approves the first pending request that appears."""

    def run():
        while not stop.is_set():
            request = HumanRequest.objects.filter(status="pending").first()
            if request is not None:
                human_request_respond(request_id=request.pk, responder=reviewer, decision="approve")
                return
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode, version", [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
def test_the_sdk_client_adds_finds_and_waits_for_approval(qmcp_server, mode, version):
    caller = make_reviewer()
    token, secret = make_token(user=caller, scopes=["tools:read", "tools:call"])
    reviewer = make_reviewer()
    target = UserFactory()
    surname = f"Era{mode.capitalize()}"

    async def run():
        async with httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {secret}"}, timeout=httpx2.Timeout(10, read=60)
        ) as http:
            transport = streamable_http_client(qmcp_server.mcp_url, http_client=http)
            async with Client(transport, mode=mode, read_timeout_seconds=60) as client:
                negotiated = client.session.protocol_version
                listed = await client.list_tools()
                added = await client.call_tool(
                    "add_user",
                    {"name": "Ada", "surname": surname, "email": f"ada.{mode}@example.com"},
                )
                found = await client.call_tool("search_users", {"query": surname})
                deleted = await client.call_tool("delete_user", {"user_id": target.pk})
                return negotiated, listed, added, found, deleted

    stop = threading.Event()
    reviewer_thread = approve_when_asked(reviewer, stop)
    try:
        negotiated, listed, added, found, deleted = anyio.run(run)
    finally:
        stop.set()
        reviewer_thread.join(5)

    assert negotiated == version
    assert {"add_user", "search_users", "delete_user"} <= {t.name for t in listed.tools}
    assert added.is_error is False, text_of(added)
    assert found.structured_content["count"] == 1
    assert found.structured_content["users"][0]["id"] == added.structured_content["id"]
    assert deleted.is_error is False, text_of(deleted)
    assert "Deleted user" in text_of(deleted)
    assert not User.objects.filter(pk=target.pk).exists()
    calls = ToolInvocation.objects.filter(token=token).order_by("created_at")
    assert [(c.tool_name, c.status) for c in calls] == [
        ("add_user", "succeeded"),
        ("search_users", "succeeded"),
        ("delete_user", "succeeded"),
    ]
    sessions = McpSession.objects.filter(token=token)
    if mode == "auto":
        assert not sessions.exists() and {c.mcp_session_id for c in calls} == {""}
    else:
        assert {c.mcp_session_id for c in calls} == {sessions.get().pk}


def test_the_sdk_client_listens_to_a_gated_call_until_a_reviewer_decides(qmcp_server):
    caller_secret = make_token(user=make_reviewer(), scopes=["tools:read", "tools:call"])[1]
    reviewer = make_reviewer()
    reviewer.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    reviewer_secret = make_token(user=reviewer, scopes=["hitl:respond", "tools:read"])[1]
    target = UserFactory()
    gated = httpx.post(
        f"{qmcp_server.url}/v1/tools/delete_user",
        json={"user_id": target.pk},
        headers={"Authorization": f"Bearer {caller_secret}"},
        timeout=10,
    )
    assert gated.status_code == 202, gated.text
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    uri = f"qmcp://invocations/{invocation.pk}"
    request_id = str(invocation.human_request.pk)

    async def run():
        async with httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {caller_secret}"}, timeout=httpx2.Timeout(10)
        ) as http:
            transport = streamable_http_client(qmcp_server.mcp_url, http_client=http)
            async with Client(transport, mode="auto") as client:
                async with client.listen(resource_subscriptions=[uri]) as subscription:
                    honored = subscription.honored
                    # Decided over REST, in the server: its commit pushes the change.
                    async with httpx2.AsyncClient() as rest:
                        decided = await rest.post(
                            f"{qmcp_server.url}/v1/human/responses",
                            json={"request_id": request_id, "decision": "approve"},
                            headers={"Authorization": f"Bearer {reviewer_secret}"},
                        )
                    assert decided.status_code == 201, decided.text
                    with anyio.fail_after(10):
                        event = await anext(subscription)
                return client.session.protocol_version, honored, event

    version, honored, event = anyio.run(run)
    assert version == "2026-07-28"
    assert honored.resource_subscriptions == [uri]
    assert event == ResourceUpdated(uri=uri)
