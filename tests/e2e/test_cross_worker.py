"""Two QMCP processes sharing a database and the Redis channel layer: a call waiting for
approval on one worker gets its answer the moment a reviewer decides on the other, and a
subscriptions/listen stream on one worker hears of a change made on the other."""

import json
import os
import threading
import time

import httpx
import pytest
from django.contrib.auth.models import Permission

from tests.factories import StaffFactory, UserFactory, make_token
from tests.live import LiveServer
from tools.models import ToolInvocation
from users.models import User

pytestmark = pytest.mark.django_db(transaction=True)

REDIS = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/3"
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def two_workers(_live_server_process):
    """Two more servers on the test database, sharing one Redis channel layer."""
    servers = [LiveServer(env={"REDIS_URL": REDIS}).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def open_session(client: httpx.Client, url: str) -> dict:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t"},
        },
    }
    response = client.post(url, json=init, headers=MCP_HEADERS)
    assert response.status_code == 200
    return {**MCP_HEADERS, "Mcp-Session-Id": response.headers["mcp-session-id"]}


def test_a_decision_on_one_worker_answers_the_call_waiting_on_the_other(two_workers):
    waiter, decider = two_workers
    caller, reviewer = StaffFactory(), StaffFactory()
    reviewer.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    target = UserFactory()
    caller_secret = make_token(user=caller, scopes=["tools:call", "tools:read"])[1]
    reviewer_secret = make_token(user=reviewer, scopes=["hitl:respond", "tools:read"])[1]

    messages, arrived = [], threading.Event()
    decided_at = {}

    def call():
        with httpx.Client(
            headers={"Authorization": f"Bearer {caller_secret}"}, timeout=30
        ) as client:
            headers = open_session(client, waiter.mcp_url)
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "delete_user", "arguments": {"user_id": target.pk}},
            }
            with client.stream("POST", waiter.mcp_url, json=body, headers=headers) as response:
                for line in response.iter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        message = json.loads(line[5:])
                        messages.append((time.monotonic(), message))
                        if message.get("id") == 1:
                            arrived.set()
                            return

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(m.get("method") == "notifications/message" for _, m in messages):
        assert time.monotonic() < deadline, "the call did not start waiting"
        time.sleep(0.05)

    request_id = ToolInvocation.objects.get(tool_name="delete_user").human_request.pk
    decided_at["t"] = time.monotonic()
    response = httpx.post(
        f"{decider.url}/v1/human/responses",
        json={"request_id": str(request_id), "decision": "approve"},
        headers={"Authorization": f"Bearer {reviewer_secret}"},
    )
    assert response.status_code == 201, response.text
    assert arrived.wait(8), "no answer reached the waiting worker"
    thread.join(5)

    answered_at, final = messages[-1]
    assert "Deleted user" in final["result"]["content"][0]["text"]
    # Pushed through Redis, not found by the waiting worker's 10 s re-read.
    assert answered_at - decided_at["t"] < 3
    assert not User.objects.filter(pk=target.pk).exists()
    assert ToolInvocation.objects.get(tool_name="delete_user").status == "succeeded"


def test_a_listen_stream_on_one_worker_hears_of_a_decision_made_on_the_other(two_workers):
    listener, decider = two_workers
    caller, reviewer = StaffFactory(), StaffFactory()
    reviewer.user_permissions.add(Permission.objects.get(codename="respond_humanrequest"))
    target = UserFactory()
    caller_secret = make_token(user=caller, scopes=["tools:call", "tools:read"])[1]
    reviewer_secret = make_token(user=reviewer, scopes=["hitl:respond", "tools:read"])[1]
    gated = httpx.post(
        f"{listener.url}/v1/tools/delete_user",
        json={"user_id": target.pk},
        headers={"Authorization": f"Bearer {caller_secret}"},
        timeout=10,
    )
    assert gated.status_code == 202, gated.text
    invocation = ToolInvocation.objects.get(tool_name="delete_user")
    uri = f"qmcp://invocations/{invocation.pk}"
    listen = {
        "jsonrpc": "2.0",
        "id": "watch",
        "method": "subscriptions/listen",
        "params": {
            "notifications": {"resourceSubscriptions": [uri]},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        **MCP_HEADERS,
        "Authorization": f"Bearer {caller_secret}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "subscriptions/listen",
    }
    messages, acknowledged, updated = [], threading.Event(), threading.Event()

    def watch():
        with httpx.stream("POST", listener.mcp_url, json=listen, headers=headers, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and line[5:].strip():
                    messages.append(json.loads(line[5:]))
                    acknowledged.set()
                    if messages[-1].get("method") == "notifications/resources/updated":
                        updated.set()
                        return

    thread = threading.Thread(target=watch)
    thread.start()
    assert acknowledged.wait(10), "the listen stream was not acknowledged"
    response = httpx.post(
        f"{decider.url}/v1/human/responses",
        json={"request_id": str(invocation.human_request.pk), "decision": "approve"},
        headers={"Authorization": f"Bearer {reviewer_secret}"},
    )
    assert response.status_code == 201, response.text
    # A listen stream re-reads nothing: the update can only have come by push, via Redis.
    assert updated.wait(8), "no update reached the listening worker"
    thread.join(5)
    assert messages[0]["method"] == "notifications/subscriptions/acknowledged"
    assert messages[-1]["params"] == {
        "uri": uri,
        "_meta": {"io.modelcontextprotocol/subscriptionId": "watch"},
    }
