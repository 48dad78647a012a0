"""QMCPClient and AsyncQMCPClient against a live QMCP server."""

import asyncio
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from qmcp_client import (
    OPERATIONS,
    AsyncQMCPClient,
    AuthenticationError,
    Conflict,
    Health,
    HumanRequest,
    Invocation,
    NotFound,
    Page,
    PermissionDenied,
    PolicyExplanation,
    QMCPClient,
    QMCPConnectionError,
    QMCPError,
    ServerError,
    Tool,
    ValidationError,
    WaitTimeout,
)
from qmcp_client.rest import QMCPClient as RestClient
from tests.factories import StaffFactory, UserFactory, make_token
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db(transaction=True)

HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def test_import_needs_no_django():
    code = "import sys; import qmcp_client; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    code = (
        "import sys; import qmcp_client.mcp, qmcp_client.cli; "
        "assert 'django' not in sys.modules and 'mcp' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_operations_table_covers_the_openapi_document(qmcp_server):
    document = httpx.get(f"{qmcp_server.url}/v1/openapi.json", timeout=10).json()
    in_document = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert in_document, "the OpenAPI document lists no operation"
    covered = set(OPERATIONS)
    missing = in_document - covered
    assert not missing, f"operations with no client method: {sorted(missing)}"
    # Everything in the table is either in the document or the (undocumented) health check.
    assert covered - in_document == {("GET", "/health")}
    for name in OPERATIONS.values():
        assert callable(getattr(QMCPClient, name)), name
        assert asyncio.iscoroutinefunction(getattr(AsyncQMCPClient, name)), name


def test_health(client):
    health = client.health()
    assert isinstance(health, Health) and health.status == "ok"


def test_explain_policy_says_what_a_call_would_need_and_runs_nothing(client):
    echo = client.explain_policy("echo", {"message": "hi"})
    assert isinstance(echo, PolicyExplanation)
    assert (echo.tool, echo.outcome, echo.rule, echo.approval) == ("echo", "allow", "", None)
    delete = client.explain_policy("delete_user", {"user_id": 1})
    assert delete.outcome == "approval" and delete.approval.approvals_required >= 1
    assert "policy" in delete.why
    assert not ToolInvocation.objects.exists()  # explaining is not calling


def test_list_tools_is_typed(client):
    tools = client.list_tools()
    assert all(isinstance(t, Tool) for t in tools)
    by_name = {t.name: t for t in tools}
    assert {"echo", "add_user", "search_users", "deploy", "delete_user"} <= set(by_name)
    assert by_name["echo"].input_schema["type"] == "object"
    assert by_name["deploy"].policy.requires_approval is True
    assert by_name["echo"].policy.requires_approval is False


def test_call_tool_and_the_audit_log(client):
    invocation = client.call_tool("echo", message="hi")
    assert isinstance(invocation, Invocation)
    assert invocation.status == "succeeded" and invocation.tool == "echo"
    assert invocation.via == "rest" and "hi" in invocation.text
    assert invocation.arguments == {"message": "hi"}
    assert client.invoke("echo", {"message": "again"}).status == "succeeded"

    fetched = client.get_invocation(invocation.id)
    assert fetched.id == invocation.id and fetched.result == invocation.result

    page = client.list_invocations(tool="echo")
    assert isinstance(page, Page) and page.count == 2 and len(page.items) == 2
    assert all(isinstance(i, Invocation) for i in page.items)
    assert page.items[0].arguments == {"message": "again"}  # newest first
    assert client.list_invocations(tool="echo", status="failed").count == 0
    assert client.list_invocations(principal=invocation.principal_id).count >= 2
    second = client.list_invocations(tool="echo", page=2, page_size=1)
    assert second.items[0].id == invocation.id and second.page == 2 and not second.has_next


def test_tool_arguments_named_like_parameters(client):
    """``name`` is a tool argument here, not the tool's name (positional-only)."""
    invocation = client.call_tool(
        "add_user", name="Arkadiy", surname="Dobkin", email="arkadiy@example.com"
    )
    assert invocation.status == "succeeded"
    found = client.call_tool("search_users", query="Dobkin")
    assert "arkadiy@example.com" in str(found.structured)


def test_bad_token_is_authentication_error(qmcp_server):
    with QMCPClient(qmcp_server.url, "qmcp_not-a-token", retries=0) as qmcp:
        with pytest.raises(AuthenticationError) as caught:
            qmcp.list_tools()
    error = caught.value
    assert error.status == 401 and error.code == "unauthenticated"
    assert error.message == "Invalid API token."
    assert isinstance(error, QMCPError)
    with QMCPClient(qmcp_server.url, "", retries=0) as qmcp:
        with pytest.raises(AuthenticationError) as caught:
            qmcp.list_invocations()
    assert "Bearer" in caught.value.message


def test_missing_scope_is_permission_denied(qmcp_server):
    secret = make_token(user=StaffFactory(), scopes=["tools:read"])[1]
    with QMCPClient(qmcp_server.url, secret, retries=0) as qmcp:
        assert qmcp.list_tools()
        with pytest.raises(PermissionDenied) as caught:
            qmcp.call_tool("echo", message="hi")
    assert caught.value.status == 403 and caught.value.code == "missing_scope"


def test_unknown_invocation_and_tool_are_not_found(client):
    with pytest.raises(NotFound) as caught:
        client.get_invocation(uuid.uuid4())
    assert caught.value.status == 404 and caught.value.code == "not_found"
    with pytest.raises(NotFound) as caught:
        client.call_tool("no_such_tool")
    assert caught.value.code == "unknown_tool" and "no_such_tool" in caught.value.message
    with pytest.raises(NotFound):
        client.get_human_request(uuid.uuid4())


def test_bad_arguments_are_validation_errors(client):
    with pytest.raises(ValidationError) as caught:
        client.call_tool("echo", wrong="field")
    error = caught.value
    assert error.status == 422 and error.code == "invalid_arguments"
    assert error.details["errors"]
    # Refused calls leave an audit row too.
    assert ToolInvocation.objects.filter(tool_name="echo", status="refused").exists()
    with pytest.raises(ValidationError) as caught:
        client.create_human_request("t", timeout_seconds="soon")  # type: ignore[arg-type]
    assert caught.value.status == 422


def test_human_requests_and_responses(client, reviewer):
    created = client.create_human_request(
        "Which colour?", "Pick one", options=["red", "blue"], context={"ticket": 7}
    )
    assert isinstance(created, HumanRequest)
    assert created.status == "pending" and created.kind == "question"
    assert created.options == ["red", "blue"] and created.context == {"ticket": 7}

    queue = reviewer.list_human_requests(status="pending")
    assert isinstance(queue, Page) and created.id in {r.id for r in queue.items}
    assert all(isinstance(r, HumanRequest) for r in queue.items)
    assert client.list_human_requests().count == 1  # the agent sees its own

    decided = reviewer.respond(created.id, "answer", option="blue", comment="obviously")
    assert decided.status != "pending" and decided.answer == "blue"
    assert len(decided.responses) == 1
    response = decided.responses[0]
    assert response.decision == "answer" and response.comment == "obviously"

    detail = client.get_human_request(created.id)
    assert detail.responses[0].option == "blue" and detail.invocation is None
    assert client.wait_for_response(created.id, timeout=1).answer == "blue"

    with pytest.raises(Conflict) as caught:
        reviewer.respond(created.id, "reject")
    assert caught.value.status == 409


def test_a_reviewer_hands_a_request_to_a_colleague_who_then_decides_it(
    client, reviewer, qmcp_server
):
    from tests.client.conftest import make_reviewer

    created = client.create_human_request("Ship it?", kind="approval")
    colleague = make_reviewer()
    handed = reviewer.delegate(created.id, colleague.email, comment="yours")
    assert isinstance(handed, HumanRequest) and handed.status == "pending"
    with pytest.raises(PermissionDenied) as caught:
        reviewer.approve(created.id)
    assert caught.value.code == "forbidden"
    secret = make_token(user=colleague, scopes=["hitl:respond"])[1]
    with QMCPClient(qmcp_server.url, secret, retries=0) as qmcp:
        assert qmcp.approve(created.id).outcome == "approved"


def test_only_reviewers_with_the_scope_respond(client, qmcp_server):
    created = client.create_human_request("Ship it?", kind="approval")
    # The agent's token has no hitl:respond scope.
    with pytest.raises(PermissionDenied) as caught:
        client.respond(created.id, "approve")
    assert caught.value.code == "missing_scope"
    # A token with only tools:call cannot read the queue.
    secret = make_token(user=StaffFactory(), scopes=["tools:call"])[1]
    with QMCPClient(qmcp_server.url, secret, retries=0) as qmcp:
        with pytest.raises(PermissionDenied):
            qmcp.list_human_requests()


def test_wait_for_response_times_out(client):
    created = client.create_human_request("Nobody answers")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait_for_response(created.id, timeout=0.5, poll_interval=0.1)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, TimeoutError) and caught.value.code == "timeout"


def approve_when_pending(
    reviewer_url, reviewer_token, tool, decision="approve", comment="", after=None
):
    """A reviewer in another thread: waits for the call's request (and for ``after``, an
    event, when given), then decides."""
    outcome = {}

    def run():
        if after is not None:
            after.wait(20)
        with QMCPClient(reviewer_url, reviewer_token, retries=0) as reviewer:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pending = [
                    r
                    for r in reviewer.list_human_requests(status="pending").items
                    if r.invocation_id is not None
                ]
                if pending:
                    outcome["request"] = reviewer.respond(pending[0].id, decision, comment=comment)
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_invoke_and_wait_approved(client, qmcp_server, reviewer_token):
    polls, polled = [], threading.Event()
    # The reviewer decides only once the client has polled the waiting call, so the test
    # sees the wait whatever the machine's speed.
    thread, outcome = approve_when_pending(qmcp_server.url, reviewer_token, "deploy", after=polled)

    def on_poll(invocation):
        polls.append(invocation)
        polled.set()

    invocation = client.invoke_and_wait(
        "deploy",
        service="api",
        version="1.2.3",
        timeout=30,
        poll_interval=0.1,
        on_poll=on_poll,
    )
    thread.join(5)
    assert outcome["request"].outcome == "approved"
    assert invocation.status == "succeeded", invocation
    assert invocation.structured["service"] == "api"
    assert invocation.human_request_id == outcome["request"].id
    assert polls  # it did wait


def test_invoke_and_wait_rejected(client, qmcp_server, reviewer_token):
    thread, outcome = approve_when_pending(
        qmcp_server.url, reviewer_token, "deploy", decision="reject", comment="not today"
    )
    invocation = client.invoke_and_wait(
        "deploy", {"service": "api", "version": "9"}, timeout=30, poll_interval=0.1
    )
    thread.join(5)
    assert invocation.status == "rejected"


def test_an_approval_with_a_grant_lets_the_same_call_run_at_once_afterwards(client, reviewer):
    first = client.invoke("deploy", service="api", version="9.9.9")
    assert first.status == "awaiting_approval"
    decided = reviewer.respond(first.human_request_id, "approve", grant_hours=1)
    assert decided.outcome == "approved"
    again = client.invoke("deploy", service="api", version="9.9.9")
    assert again.status == "succeeded", again
    assert again.human_request_id is None
    assert client.invoke("deploy", service="api", version="9.9.8").status == "awaiting_approval"


def test_gated_call_answers_202_and_invoke_and_wait_times_out(client):
    target = UserFactory()
    invocation = client.call_tool("delete_user", user_id=target.pk)
    assert invocation.status == "awaiting_approval" and invocation.human_request_id
    request = client.get_human_request(invocation.human_request_id)
    assert request.invocation.id == invocation.id and request.invocation.tool == "delete_user"
    with pytest.raises(WaitTimeout):
        client.invoke_and_wait("delete_user", user_id=target.pk, timeout=0.5, poll_interval=0.1)


def test_async_client(qmcp_server, agent_token, reviewer_token):
    async def scenario():
        async with (
            AsyncQMCPClient(qmcp_server.url, agent_token, retries=0) as agent,
            AsyncQMCPClient(qmcp_server.url, reviewer_token, retries=0) as reviewer,
        ):
            assert (await agent.health()).status == "ok"
            assert "echo" in {t.name for t in await agent.list_tools()}
            invocation = await agent.call_tool("echo", message="async")
            assert (await agent.get_invocation(invocation.id)).text == invocation.text
            assert (await agent.list_invocations(tool="echo")).count == 1
            created = await agent.create_human_request("Async?", kind="approval")
            assert (await reviewer.list_human_requests(status="pending")).count >= 1

            async def decide():
                await asyncio.sleep(0.3)
                return await reviewer.respond(created.id, "approve")

            decision, waited = await asyncio.gather(
                decide(), agent.wait_for_response(created.id, timeout=10, poll_interval=0.1)
            )
            assert waited.outcome == decision.outcome == "approved"
            assert (await agent.get_human_request(created.id)).responses
            with pytest.raises(NotFound):
                await agent.get_invocation(uuid.uuid4())
            with pytest.raises(Conflict):
                await reviewer.respond(created.id, "reject")

    asyncio.run(scenario())


def test_retries_with_backoff_on_5xx_and_connection_errors():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"code": "busy", "message": "later"}})
        return httpx.Response(200, json={"status": "ok", "database": "ok"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    qmcp = RestClient("http://qmcp.test", "t", http_client=http, retries=3, backoff=0.01)
    assert qmcp.health().status == "ok" and len(calls) == 3
    assert calls[0].headers["Authorization"] == "Bearer t"

    calls.clear()
    qmcp.retries = 1
    with pytest.raises(ServerError) as caught:
        qmcp.health()
    assert caught.value.status == 503 and caught.value.code == "busy" and len(calls) == 2

    # A POST that reached the server and failed with 500 is not repeated.
    def failing(request):
        calls.append(request)
        return httpx.Response(500, json={"error": {"code": "tool_failed", "message": "boom"}})

    calls.clear()
    qmcp = RestClient(
        "http://qmcp.test", "t", http_client=httpx.Client(transport=httpx.MockTransport(failing))
    )
    with pytest.raises(ServerError) as caught:
        qmcp.call_tool("echo", message="x")
    assert len(calls) == 1 and caught.value.code == "tool_failed"

    def refused(request):
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    calls.clear()
    qmcp = RestClient(
        "http://qmcp.test",
        "t",
        http_client=httpx.Client(transport=httpx.MockTransport(refused)),
        retries=2,
        backoff=0.01,
    )
    with pytest.raises(QMCPConnectionError):
        qmcp.call_tool("echo", message="x")
    assert len(calls) == 3
