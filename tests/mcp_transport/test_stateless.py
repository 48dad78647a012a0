"""The 2026-07-28 revision on the same /mcp: stateless requests, checked per request."""

import json

import pytest
from channels.db import database_sync_to_async

from mcp_transport.models import McpSession
from tests.factories import UserFactory, make_reviewer, make_token
from tests.mcp_transport.test_consumers import (
    Stream,
    close_orm_thread_connections,  # noqa: F401  (autouse fixture)
    send,
    sse_messages,
)
from tools.models import ToolInvocation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

NEXT = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": NEXT,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "pytest", "version": "1"},
}
NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def request(method, params=None, rpc_id=1, meta=None):
    params = dict(params or {})
    params["_meta"] = META if meta is None else meta
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


async def post(secret, method, params=None, rpc_id=1, meta=None, **headers):
    """A 2026 POST with the routing headers a client sends; keyword headers override them."""
    routing = {"mcp_protocol_version": NEXT, "mcp_method": method}
    if method in NAMED:
        routing["mcp_name"] = (params or {}).get(NAMED[method])
    routing.update(headers)
    return await send(payload=request(method, params, rpc_id, meta), secret=secret, **routing)


def body(response):
    return json.loads(response["body"])


@pytest.fixture
def secret(transactional_db):
    return make_token(user=make_reviewer())[1]


async def test_discover_names_both_eras_and_what_is_served(secret):
    response = await post(secret, "server/discover")
    assert response["status"] == 200
    result = body(response)["result"]
    assert result["supportedVersions"][0] == NEXT and "2025-11-25" in result["supportedVersions"]
    assert set(result["capabilities"]) >= {"tools", "resources", "prompts", "completions"}
    assert result["capabilities"]["resources"]["subscribe"] is True  # subscriptions/listen
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "qmcp"
    assert result["resultType"] == "complete" and result["cacheScope"] == "private"
    assert not await database_sync_to_async(McpSession.objects.exists)()


@pytest.mark.parametrize(
    "meta, headers, status, code",
    [
        ({}, {}, 400, -32602),
        ({"io.modelcontextprotocol/protocolVersion": NEXT}, {}, 400, -32602),
        ({**META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}, {}, 400, -32020),
        (
            {**META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"},
            {"mcp_protocol_version": "2099-01-01"},
            400,
            -32022,
        ),
        (META, {"mcp_method": "prompts/list"}, 400, -32020),
        (META, {"mcp_method": None}, 400, -32020),
    ],
)
async def test_a_request_whose_meta_or_headers_do_not_fit_is_refused(
    secret, meta, headers, status, code
):
    response = await post(secret, "tools/list", rpc_id=77, meta=meta, **headers)
    assert response["status"] == status
    assert body(response)["id"] == 77 and body(response)["error"]["code"] == code
    if code == -32022:
        assert body(response)["error"]["data"]["requested"] == "2099-01-01"
        assert NEXT in body(response)["error"]["data"]["supported"]


@pytest.mark.parametrize(
    "method", ["initialize", "ping", "logging/setLevel", "resources/subscribe", "no/such"]
)
async def test_removed_and_unknown_methods_are_404(secret, method):
    response = await post(secret, method, {"uri": "qmcp://tools"}, rpc_id=5)
    assert response["status"] == 404
    assert body(response) == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": -32601, "message": f"Method not found: {method}"},
    }


async def test_lists_carry_result_type_and_caching_hints(secret):
    for method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list"):
        result = body(await post(secret, method))["result"]
        assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == (
            "complete",
            0,
            "private",
        ), method


async def test_an_unknown_resource_is_32602_with_its_uri(secret):
    response = await post(secret, "resources/read", {"uri": "qmcp://nothing"})
    error = body(response)["error"]
    assert error["code"] == -32602 and error["data"]["uri"] == "qmcp://nothing"


async def test_mcp_name_must_mirror_the_tool_name(secret):
    args = {"name": "echo", "arguments": {"message": "hi"}}
    wrong = await post(secret, "tools/call", args, mcp_name="planner")
    assert wrong["status"] == 400 and body(wrong)["error"]["code"] == -32020
    spaced = await post(secret, "tools/call", args, mcp_name="  echo  ")
    assert body(spaced)["result"]["resultType"] == "complete"
    assert await database_sync_to_async(ToolInvocation.objects.count)() == 1


async def test_a_tool_call_is_audited_without_any_session(secret):
    response = await post(secret, "tools/call", {"name": "echo", "arguments": {"message": "hi"}})
    result = body(response)["result"]
    assert result["content"][0]["text"] and result["resultType"] == "complete"
    invocation = await database_sync_to_async(ToolInvocation.objects.get)()
    assert invocation.status == "succeeded" and invocation.mcp_session_id == ""
    assert invocation.mcp_protocol_version == NEXT  # the audit row records the era
    assert not await database_sync_to_async(McpSession.objects.exists)()


async def test_no_token_is_401_with_the_request_id():
    response = await post(None, "tools/list", rpc_id=9)
    assert response["status"] == 401 and body(response)["id"] == 9


async def test_a_gated_call_waits_on_its_stream_and_answers_on_approval(secret):
    reviewer = await database_sync_to_async(make_reviewer)()
    target = await database_sync_to_async(lambda: UserFactory().pk)()
    stream = await Stream.open(
        payload=request(
            "tools/call",
            {"name": "delete_user", "arguments": {"user_id": target}},
            rpc_id=3,
            meta={**META, "progressToken": "p"},
        ),
        secret=secret,
        mcp_protocol_version=NEXT,
        mcp_method="tools/call",
        mcp_name="delete_user",
    )
    await stream.read_until(lambda m: m.get("method") == "notifications/progress")

    @database_sync_to_async
    def approve():
        from hitl.services import human_request_respond

        invocation = ToolInvocation.objects.get(tool_name="delete_user")
        human_request_respond(
            request_id=invocation.human_request.pk, responder=reviewer, decision="approve"
        )

    await approve()
    messages = await stream.read_until(lambda m: m.get("id") == 3, timeout=5)
    result = messages[-1]["result"]
    assert "Deleted user" in result["content"][0]["text"] and result["resultType"] == "complete"
    assert not any(m.get("method") == "notifications/message" for m in messages)  # no logLevel
    await stream.close()


async def test_past_the_bounded_wait_a_gated_call_answers_pending_approval(secret, settings):
    settings.QMCP_MCP_APPROVAL_WAIT_SECONDS = 0.3
    target = await database_sync_to_async(lambda: UserFactory().pk)()
    response = await post(
        secret, "tools/call", {"name": "delete_user", "arguments": {"user_id": target}}, rpc_id=4
    )
    final = [m for m in sse_messages(response["body"]) if m.get("id") == 4]
    assert final[0]["result"]["content"][0]["text"].startswith("Pending approval")
    invocation = await database_sync_to_async(ToolInvocation.objects.get)(tool_name="delete_user")
    assert invocation.status == "awaiting_approval"


# --- multi round-trip requests (SEP-2322) ---------------------------------------------------


@pytest.fixture
def asking_tool():
    """An async tool that asks the client a name, then a colour, one round each."""
    from tools.registry import ToolResult, tool, unregister
    from tools.schemas import ToolInput

    def question(text, field):
        schema = {"type": "object", "properties": {field: {"type": "string"}}}
        return "elicitation/create", {"message": text, "requestedSchema": schema}

    @tool(name="test_asking", description="Asks two things.", input=ToolInput)
    async def asking(args, ctx):
        first = await ctx.ask({"name": question("Your name?", "name")})
        second = await ctx.ask({"colour": question("Your colour?", "colour")})
        return ToolResult.text(
            f"{first['name']['content']['name']} likes {second['colour']['content']['colour']}"
        )

    yield "test_asking"
    unregister("test_asking")


ELICITING = {**META, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}


def final_message(response, rpc_id):
    if response["headers"] and b"json" in dict(response["headers"]).get(b"content-type", b""):
        return body(response)
    return [m for m in sse_messages(response["body"]) if m.get("id") == rpc_id][-1]


async def call_round(secret, tool_name, rpc_id, **extra):
    return final_message(
        await post(
            secret,
            "tools/call",
            {"name": tool_name, "arguments": {}, **extra},
            rpc_id=rpc_id,
            meta=ELICITING,
        ),
        rpc_id,
    )


async def test_a_tool_asks_its_client_round_by_round_with_a_signed_state(secret, asking_tool):
    first = (await call_round(secret, asking_tool, 1))["result"]
    assert first["resultType"] == "input_required"
    assert list(first["inputRequests"]) == ["name"]
    assert first["inputRequests"]["name"]["method"] == "elicitation/create"

    answer_name = {"name": {"action": "accept", "content": {"name": "Ada"}}}
    second = (
        await call_round(
            secret, asking_tool, 2, inputResponses=answer_name, requestState=first["requestState"]
        )
    )["result"]
    assert second["resultType"] == "input_required" and list(second["inputRequests"]) == ["colour"]

    # The name comes back from the signed state only: this round answers the colour.
    answer_colour = {"colour": {"action": "accept", "content": {"colour": "teal"}}}
    third = (
        await call_round(
            secret,
            asking_tool,
            3,
            inputResponses=answer_colour,
            requestState=second["requestState"],
        )
    )["result"]
    assert third["resultType"] == "complete"
    assert third["content"][0]["text"] == "Ada likes teal"
    statuses = await database_sync_to_async(
        lambda: list(ToolInvocation.objects.values_list("status", flat=True))
    )()
    assert statuses == ["succeeded"] * 3  # each round is audited


async def test_a_tampered_request_state_is_refused_and_the_tool_does_not_run(secret, asking_tool):
    first = (await call_round(secret, asking_tool, 1))["result"]
    state = first["requestState"]
    tampered = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    refused = await call_round(secret, asking_tool, 2, requestState=tampered)
    assert refused["error"]["code"] == -32602 and "integrity" in refused["error"]["message"]
    rows = await database_sync_to_async(
        lambda: list(ToolInvocation.objects.order_by("created_at").values("status", "error"))
    )()
    # The tool ran once (the first round); the refused round is audited, with the reason.
    assert [r["status"] for r in rows] == ["succeeded", "refused"]
    assert "integrity" in rows[1]["error"]["message"]


@pytest.mark.parametrize("responses", ["nope", {"name": "not an object"}])
async def test_malformed_input_responses_are_32602(secret, asking_tool, responses):
    refused = await call_round(secret, asking_tool, 1, inputResponses=responses)
    assert refused["error"]["code"] == -32602
    invocation = await database_sync_to_async(ToolInvocation.objects.get)()
    assert invocation.status == "refused" and invocation.mcp_protocol_version == NEXT
    assert invocation.error["code"] == "invalid_input"


async def test_a_question_the_client_cannot_answer_is_400_with_32021(secret, asking_tool):
    response = await post(
        secret, "tools/call", {"name": asking_tool, "arguments": {}}, rpc_id=8, meta=META
    )
    assert response["status"] == 400
    error = body(response)["error"]
    assert error["code"] == -32021
    assert error["data"] == {"requiredCapabilities": {"elicitation": {}}}


@pytest.fixture
def asking_prompt():
    from mcp_transport import features

    features.register(
        features.Prompt(
            name="test_asking_prompt",
            description="Asks for a topic first.",
            arguments=[],
            asks={"topic": ("elicitation/create", {"message": "Topic?", "requestedSchema": {}})},
            render=lambda principal, answers: [
                features.text_message(f"Write about {answers['topic']['content']['topic']}.")
            ],
        )
    )
    yield "test_asking_prompt"
    features.PROMPTS.pop("test_asking_prompt")


async def test_a_prompt_can_ask_first_and_renders_with_the_answer(secret, asking_prompt):
    first = body(await post(secret, "prompts/get", {"name": asking_prompt}, meta=ELICITING))
    asked = first["result"]
    assert asked["resultType"] == "input_required" and list(asked["inputRequests"]) == ["topic"]
    answer = {"topic": {"action": "accept", "content": {"topic": "otters"}}}
    second = body(
        await post(
            secret,
            "prompts/get",
            {
                "name": asking_prompt,
                "inputResponses": answer,
                "requestState": asked["requestState"],
            },
            meta=ELICITING,
        )
    )["result"]
    assert second["resultType"] == "complete"
    assert second["messages"][0]["content"]["text"] == "Write about otters."


async def test_a_revoked_token_is_refused_at_once_although_its_principal_is_cached():
    from users.services import api_token_revoke

    token, secret = await database_sync_to_async(make_token)()
    assert (await post(secret, "tools/list"))["status"] == 200
    await database_sync_to_async(api_token_revoke)(token=token)
    assert (await post(secret, "tools/list"))["status"] == 401
