"""Resources, prompts and completion over MCP, on the sync protocol."""

import json

import pytest

from mcp_transport.features import USER_TOOLS_GUIDE
from tests.factories import StaffFactory, UserFactory, make_auditor
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db


# --- resources ------------------------------------------------------------------------------


def test_resources_list_and_templates(mcp):
    resources = {r["uri"]: r for r in mcp.result("resources/list")["resources"]}
    assert {"qmcp://guide/user-tools", "qmcp://tools"} <= set(resources)
    assert resources["qmcp://guide/user-tools"]["mimeType"] == "text/markdown"
    templates = mcp.result("resources/templates/list")["resourceTemplates"]
    assert "qmcp://invocations/{id}" in {t["uriTemplate"] for t in templates}


def test_read_the_user_tools_guide(mcp):
    contents = mcp.result("resources/read", {"uri": "qmcp://guide/user-tools"})["contents"]
    assert contents == [
        {"uri": "qmcp://guide/user-tools", "mimeType": "text/markdown", "text": USER_TOOLS_GUIDE}
    ]


def test_read_the_tools_resource(mcp):
    (content,) = mcp.result("resources/read", {"uri": "qmcp://tools"})["contents"]
    tools = {t["name"]: t for t in json.loads(content["text"])}
    assert tools["delete_user"]["requires_approval"] is True
    assert tools["echo"]["enabled"] is True


def test_read_an_own_invocation(mcp):
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "mine"}})
    row = ToolInvocation.objects.get()
    uri = f"qmcp://invocations/{row.pk}"
    (content,) = mcp.result("resources/read", {"uri": uri})["contents"]
    assert content["uri"] == uri and content["mimeType"] == "application/json"
    data = json.loads(content["text"])
    assert (data["id"], data["tool"], data["status"], data["via"]) == (
        str(row.pk),
        "echo",
        "succeeded",
        "mcp",
    )
    assert data["arguments"] == {"message": "mine"}


def test_another_users_invocation_is_not_found(mcp, mcp_for):
    other = mcp_for(UserFactory())
    other.result("tools/call", {"name": "echo", "arguments": {"message": "theirs"}})
    uri = f"qmcp://invocations/{ToolInvocation.objects.get().pk}"
    error = mcp.error("resources/read", {"uri": uri})
    assert error["code"] == -32002
    assert error["data"] == {"uri": uri}
    assert "theirs" not in json.dumps(error)


def test_staff_with_the_view_permission_may_read_anyones_invocation(mcp, mcp_for):
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "theirs"}})
    uri = f"qmcp://invocations/{ToolInvocation.objects.get().pk}"
    assert mcp_for(StaffFactory()).error("resources/read", {"uri": uri})["code"] == -32002
    staff = mcp_for(make_auditor())
    (content,) = staff.result("resources/read", {"uri": uri})["contents"]
    assert json.loads(content["text"])["arguments"] == {"message": "theirs"}


@pytest.mark.parametrize(
    "uri",
    [
        "qmcp://nothing",
        "qmcp://invocations/not-a-uuid",
        "qmcp://invocations/00000000-0000-0000-0000-000000000000",
        "https://example.com/",
    ],
)
def test_unknown_resource_is_32002(mcp, uri):
    error = mcp.error("resources/read", {"uri": uri})
    assert error["code"] == -32002
    assert error["data"] == {"uri": uri}


def test_read_without_a_uri_is_32602(mcp):
    assert mcp.error("resources/read", {})["code"] == -32602


def test_subscribe_and_unsubscribe_persist_on_the_session(mcp):
    assert mcp.result("resources/subscribe", {"uri": "qmcp://tools"}) == {}
    mcp.result("resources/subscribe", {"uri": "qmcp://tools"})
    mcp.result("resources/subscribe", {"uri": "qmcp://guide/user-tools"})
    assert mcp.session().subscriptions == ["qmcp://tools", "qmcp://guide/user-tools"]
    assert mcp.result("resources/unsubscribe", {"uri": "qmcp://tools"}) == {}
    mcp.result("resources/unsubscribe", {"uri": "qmcp://never-subscribed"})
    assert mcp.session().subscriptions == ["qmcp://guide/user-tools"]


def test_subscriptions_are_per_session(mcp, mcp_for, user):
    other = mcp_for(user)
    mcp.result("resources/subscribe", {"uri": "qmcp://tools"})
    assert other.session().subscriptions == []


# --- prompts and completion -----------------------------------------------------------------


def test_prompts_list(mcp):
    prompts = {p["name"]: p for p in mcp.result("prompts/list")["prompts"]}
    assert {"user_tools_guide", "ensure_user"} <= set(prompts)
    arguments = {a["name"]: a["required"] for a in prompts["ensure_user"]["arguments"]}
    assert arguments == {"name": True, "surname": True, "email": False}


def test_get_the_guide_prompt_without_arguments(mcp):
    result = mcp.result("prompts/get", {"name": "user_tools_guide"})
    assert result["messages"] == [
        {"role": "user", "content": {"type": "text", "text": USER_TOOLS_GUIDE}}
    ]


def test_get_ensure_user_renders_the_names(mcp):
    result = mcp.result(
        "prompts/get",
        {
            "name": "ensure_user",
            "arguments": {"name": "Ada", "surname": "Lovelace", "email": "ada@example.org"},
        },
    )
    assert result["description"]
    text = result["messages"][-1]["content"]["text"]
    assert "Ada Lovelace" in text and "ada@example.org" in text
    assert all(m["role"] == "user" for m in result["messages"])


@pytest.mark.parametrize(
    "params",
    [
        {"name": "ensure_user", "arguments": {"name": "Ada"}},
        {"name": "ensure_user", "arguments": {"name": "Ada", "surname": "L", "age": "36"}},
        {"name": "ensure_user", "arguments": {"name": "Ada", "surname": 5}},
        {"name": "ensure_user", "arguments": ["Ada", "Lovelace"]},
        {"name": "no_such_prompt"},
        {},
    ],
)
def test_bad_prompt_requests_are_32602(mcp, params):
    assert mcp.error("prompts/get", params)["code"] == -32602


def test_completion_for_an_unknown_prompt_is_empty(mcp):
    result = mcp.result(
        "completion/complete",
        {"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "x", "value": "a"}},
    )
    assert result == {"completion": {"values": [], "total": 0, "hasMore": False}}


def test_completion_of_invocation_ids_shows_only_own(mcp, mcp_for):
    mcp.result("tools/call", {"name": "echo", "arguments": {"message": "mine"}})
    mcp_for(UserFactory()).result("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    mine = str(ToolInvocation.objects.get(arguments__message="mine").pk)
    ref = {"type": "ref/resource", "uri": "qmcp://invocations/{id}"}
    values = mcp.result(
        "completion/complete", {"ref": ref, "argument": {"name": "id", "value": ""}}
    )["completion"]["values"]
    assert values == [mine]
    prefixed = mcp.result(
        "completion/complete", {"ref": ref, "argument": {"name": "id", "value": mine[:4]}}
    )["completion"]["values"]
    assert prefixed == [mine]


@pytest.mark.parametrize(
    "params",
    [
        {"argument": {"name": "x", "value": ""}},
        {"ref": {"type": "ref/prompt", "name": "ensure_user"}},
        {"ref": {"type": "ref/prompt", "name": "ensure_user"}, "argument": {"value": "a"}},
        {
            "ref": {"type": "ref/prompt", "name": "ensure_user"},
            "argument": {"name": "n", "value": 1},
        },
    ],
)
def test_bad_completion_requests_are_32602(mcp, params):
    assert mcp.error("completion/complete", params)["code"] == -32602


@pytest.mark.parametrize(
    "ref",
    [{"type": "ref/prompt", "name": ["ensure_user"]}, {"type": "ref/resource", "uri": {"a": 1}}],
)
def test_completion_with_an_unhashable_ref_is_answered(mcp, ref):
    """A ref whose name or uri is not a string is invalid params or completes to nothing."""
    body = mcp.request("completion/complete", {"ref": ref, "argument": {"name": "x", "value": ""}})
    if "error" in body:
        assert body["error"]["code"] == -32602
    else:
        assert body["result"]["completion"]["values"] == []
