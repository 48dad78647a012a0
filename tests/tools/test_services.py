import pytest
from pydantic import BaseModel

from qmcp_site.errors import ApplicationError
from tests.factories import UserFactory, make_token
from tools.models import ToolInvocation, ToolPolicy
from tools.registry import ToolResult, tool, unregister
from tools.schemas import ToolInput
from tools.services import tool_invoke, tool_policies_sync
from tools.signals import invocation_gated
from users.principals import Principal

pytestmark = pytest.mark.django_db


class Nothing(ToolInput):
    pass


@pytest.fixture
def scratch_tool():
    """Registers ``scratch`` whose behaviour the test sets through ``behaviour``."""
    behaviour = {}

    @tool(name="scratch", description="test tool", input=Nothing)
    def scratch(args, ctx):
        return behaviour["run"](ctx)

    yield behaviour
    unregister("scratch")


def invoke(principal, name="echo", arguments=None, **kwargs):
    return tool_invoke(
        name=name,
        arguments={"message": "hi"} if arguments is None else arguments,
        principal=principal,
        via="rest",
        **kwargs,
    )


def test_echo_success_writes_one_complete_row(principal):
    invocation = invoke(principal, request_id="r-1", correlation_id="c-1", mcp_session_id="s")
    row = ToolInvocation.objects.get()
    assert row.pk == invocation.pk
    assert row.status == "succeeded"
    assert row.result == {
        "content": [{"type": "text", "text": "hi"}],
        "structuredContent": {"message": "hi"},
        "isError": False,
    }
    assert (row.request_id, row.correlation_id, row.mcp_session_id) == ("r-1", "c-1", "s")
    assert row.principal == principal.user and row.via == "rest"
    assert row.started_at and row.finished_at and row.duration_ms is not None


def test_deleting_the_caller_or_the_token_keeps_the_audit_row(db):
    """The audit table has no database constraint on them. Django clears the caller's link;
    the token's id stays, so the row still says the call came with a token."""
    token, _ = make_token()
    token_id = token.pk
    invocation = invoke(Principal.for_token(token))
    row = ToolInvocation.objects.get(pk=invocation.pk)
    assert (row.principal_id, row.token_id) == (token.user_id, token.pk)
    label = row.principal_label

    token.delete()
    row = ToolInvocation.objects.select_related("token").get(pk=invocation.pk)
    assert (row.token_id, row.token, row.principal_id) == (token_id, None, token.user_id)
    token.user.delete()
    row.refresh_from_db()
    assert (row.principal_id, row.principal_label, row.status) == (None, label, "succeeded")


def test_planner_numbers_steps_from_the_goal(principal):
    invocation = invoke(
        principal, "planner", {"goal": "Find Arkadiy Dobkin and then add him if missing"}
    )
    steps = invocation.result["structuredContent"]["steps"]
    assert steps[0].startswith("Clarify the goal")
    assert "Find Arkadiy Dobkin." in steps and "Add him if missing." in steps
    assert steps[-1].startswith("Check the result")
    assert invocation.result["content"][0]["text"].splitlines()[1] == "2. Find Arkadiy Dobkin."


def test_planner_respects_max_steps(principal):
    goal = "a; b; c; d; e; f; g; h"
    steps = invoke(principal, "planner", {"goal": goal, "max_steps": 4}).result[
        "structuredContent"
    ]["steps"]
    assert len(steps) == 4


@pytest.mark.parametrize(
    "name, arguments, code",
    [
        ("no_such_tool", {}, "unknown_tool"),
        ("echo", {"message": 3}, "invalid_arguments"),
        ("echo", {}, "invalid_arguments"),
        ("echo", ["not", "an", "object"], "invalid_arguments"),
        ("echo", {"message": "x", "extra": 1}, "invalid_arguments"),
    ],
)
def test_refusals_are_recorded_then_raised(principal, name, arguments, code):
    with pytest.raises(ApplicationError) as exc:
        invoke(principal, name, arguments)
    assert exc.value.code == code
    row = ToolInvocation.objects.get()
    assert (row.status, row.tool_name, row.error["code"]) == ("refused", name, code)
    assert row.arguments == arguments


def test_missing_scope_is_refused(db):
    principal = Principal(user=UserFactory(), scopes=frozenset({"tools:read"}))
    with pytest.raises(ApplicationError) as exc:
        invoke(principal)
    assert exc.value.code == "missing_scope"
    assert ToolInvocation.objects.get().status == "refused"


def test_disabled_tool_is_refused(principal):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="echo").update(enabled=False)
    with pytest.raises(ApplicationError) as exc:
        invoke(principal)
    assert exc.value.code == "tool_disabled"
    assert ToolInvocation.objects.get().error["code"] == "tool_disabled"


def test_policy_requiring_approval_gates_any_tool_and_signals(principal):
    tool_policies_sync()
    ToolPolicy.objects.filter(tool_name="echo").update(requires_approval=True)
    received = []

    def receiver(sender, invocation, decision, **kwargs):
        received.append((invocation.pk, decision.outcome, decision.rule))

    invocation_gated.connect(receiver)
    try:
        invocation = invoke(principal)
    finally:
        invocation_gated.disconnect(receiver)
    assert invocation.status == "awaiting_approval"
    assert invocation.result is None
    assert received == [(invocation.pk, "approval", "")]


def test_policies_are_created_from_registry_defaults():
    ToolPolicy.objects.all().delete()
    tool_policies_sync()
    assert ToolPolicy.objects.get(tool_name="delete_user").requires_approval
    assert not ToolPolicy.objects.get(tool_name="echo").requires_approval
    # An edited policy is kept by a later sync.
    ToolPolicy.objects.filter(tool_name="echo").update(enabled=False)
    tool_policies_sync()
    assert not ToolPolicy.objects.get(tool_name="echo").enabled


def test_tool_application_error_is_a_recorded_failure(principal, scratch_tool):
    def run(ctx):
        raise ApplicationError("Nope.", "conflict", {"why": "test"})

    scratch_tool["run"] = run
    invocation = invoke(principal, "scratch", {})
    assert invocation.status == "failed"
    assert invocation.error == {"code": "conflict", "message": "Nope.", "details": {"why": "test"}}
    assert invocation.result["isError"] is True
    assert invocation.result["content"][0]["text"] == "Nope."


def test_tool_crash_is_recorded_without_leaking_internals(principal, scratch_tool):
    def run(ctx):
        raise RuntimeError("secret internals")

    scratch_tool["run"] = run
    invocation = invoke(principal, "scratch", {})
    assert invocation.status == "failed"
    assert invocation.error["code"] == "tool_failed"
    assert "secret" not in str(invocation.result)


def test_failed_tool_writes_are_rolled_back(principal, scratch_tool):
    def run(ctx):
        UserFactory(email="half@example.com")
        raise ApplicationError("Failed after writing.")

    scratch_tool["run"] = run
    invoke(principal, "scratch", {})
    from users.models import User

    assert not User.objects.filter(email="half@example.com").exists()
    assert ToolInvocation.objects.get().status == "failed"


def test_tool_context_forwards_progress_and_logs(principal, scratch_tool):
    def run(ctx):
        ctx.report_progress(1, 2, "half")
        ctx.log("info", "working")
        return ToolResult.text("done")

    scratch_tool["run"] = run
    sent = []
    invoke(principal, "scratch", {}, notify=lambda method, params: sent.append((method, params)))
    assert sent == [
        ("notifications/progress", {"progress": 1, "total": 2, "message": "half"}),
        ("notifications/message", {"level": "info", "data": "working"}),
    ]


def test_output_models_give_output_schema():
    from tools.registry import get_tool

    spec = get_tool("search_users")
    assert spec.output_schema()["properties"]["users"]["type"] == "array"
    assert spec.input_schema()["additionalProperties"] is False
    assert get_tool("delete_user").annotations["destructiveHint"] is True


def test_duplicate_tool_names_are_refused():
    class Out(BaseModel):
        x: int

    with pytest.raises(ValueError, match="already registered"):

        @tool(name="echo", description="again", input=Nothing)
        def echo_again(args, ctx):
            return "x"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writes", [True, False])
def test_a_tool_runs_in_a_transaction_unless_it_declares_it_writes_nothing(principal, writes):
    """The tool's own declaration decides, not the readOnlyHint clients read (which is
    derived from it): a tool that writes commits with its audit row or not at all."""
    from django.db import connection

    seen = []

    @tool(name="declared", description="test tool", input=Nothing, writes=writes)
    def declared(args, ctx):
        seen.append(connection.in_atomic_block)
        return "ok"

    try:
        invocation = invoke(principal, name="declared", arguments={})
    finally:
        unregister("declared")
    assert seen == [writes]
    assert ToolInvocation.objects.get().pk == invocation.pk
    assert ToolInvocation.objects.get().status == "succeeded"


def test_read_only_hint_is_derived_from_the_writes_declaration():
    def nothing(args, ctx):
        return "ok"

    tool(name="hinted", description="test tool", input=Nothing, writes=False)(nothing)
    tool(name="writer", description="test tool", input=Nothing)(nothing)
    from tools.registry import get_tool

    try:
        assert get_tool("hinted").annotations["readOnlyHint"] is True
        assert "readOnlyHint" not in get_tool("writer").annotations
    finally:
        unregister("hinted")
        unregister("writer")
    for annotations, writes in [({"readOnlyHint": True}, True), ({"readOnlyHint": False}, False)]:
        with pytest.raises(ValueError, match="declare writes"):
            tool(name="bad", description="x", input=Nothing, annotations=annotations, writes=writes)
    assert get_tool("bad") is None
