"""The LLM agent against a live QMCP and a scripted OpenAI-compatible server (no network):
the Arkadiy Dobkin scenario with both MCP clients, a second MCP server, gated calls approved
and rejected, the LLM API's failures, and the interactive chat."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hitl.models import HumanRequest
from qmcp_client import QMCPClient
from qmcp_client.agent.cli import main
from tests.client.scripted_llm import (
    KEY,
    MODEL,
    ScriptedLLM,
    call,
    last_tool_results,
    say,
)
from tests.factories import UserFactory
from tests.live import mcp_script_server
from tools.models import ToolInvocation
from users.models import User

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
QUERY = "Check if Arkadiy Dobkin is present as a user, if not then add him"
ARKADIY = {"name": "Arkadiy", "surname": "Dobkin", "email": "arkadiy.dobkin@example.com"}


def dobkin_brain(body):
    """Searches for him; adds him only when the search did not find him."""
    results = last_tool_results(body)
    if body["messages"][-1]["role"] == "user":
        return call(("search_users", {"query": "Dobkin"}))
    if "search_users" in results:
        if "Arkadiy" in results["search_users"]:
            return say("Arkadiy Dobkin is already a user; nothing to add.")
        return call(("add_user", ARKADIY))
    return say("Arkadiy Dobkin was not a user, so I added him.")


def run_agent(qmcp_server, token, llm, *args, input=None):
    """``python -m qmcp_client.agent ARGS`` in a subprocess, as a person would run it."""
    env = {**os.environ, **llm.env(), "QMCP_URL": qmcp_server.url, "QMCP_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "qmcp_client.agent", *args],
        env=env,
        cwd=ROOT,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def agent_env(monkeypatch, qmcp_server, agent_token):
    """The environment of an agent run in this process, for a given scripted LLM."""

    def use(llm):
        for key, value in {
            **llm.env(),
            "QMCP_URL": qmcp_server.url,
            "QMCP_TOKEN": agent_token,
        }.items():
            monkeypatch.setenv(key, value)

    return use


@pytest.mark.parametrize("client, stream", [("sdk", True), ("qmcp", False)])
def test_the_dobkin_scenario_adds_him_once(qmcp_server, agent_token, client, stream):
    """The model searches, then adds him; run again, it finds him and adds nobody. Each
    call and its result are printed as they happen, with either MCP client."""
    flags = ["--mcp-client", client] + ([] if stream else ["--no-stream"])
    with ScriptedLLM(dobkin_brain) as llm:
        first = run_agent(qmcp_server, agent_token, llm, QUERY, *flags)
        assert first.returncode == 0, first.stderr
        assert User.objects.filter(surname="Dobkin").count() == 1
        second = run_agent(qmcp_server, agent_token, llm, QUERY, *flags)
        assert second.returncode == 0, second.stderr

    lines = first.stdout.splitlines()
    assert lines[0] == '→ search_users {"query": "Dobkin"}'
    assert lines[1].startswith("← search_users: ")
    assert lines[2].startswith('→ add_user {"name": "Arkadiy", "surname": "Dobkin"')
    assert lines[3].startswith("← add_user: ") and "arkadiy.dobkin@example.com" in lines[3]
    assert lines[4] == "assistant> Arkadiy Dobkin was not a user, so I added him."
    assert "→ add_user" not in second.stdout
    assert "Arkadiy" in second.stdout.splitlines()[1]
    assert second.stdout.splitlines()[-1] == (
        "assistant> Arkadiy Dobkin is already a user; nothing to add."
    )
    assert User.objects.filter(surname="Dobkin").count() == 1
    calls = list(ToolInvocation.objects.order_by("created_at").values_list("tool_name", "via"))
    assert calls == [("search_users", "mcp"), ("add_user", "mcp"), ("search_users", "mcp")]
    assert {r.get("stream", False) for r in llm.requests} == {stream}
    offered = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert {"search_users", "add_user", "delete_user", "echo"} <= offered
    # The model saw the search's result before it decided to add him.
    assert llm.requests[1]["messages"][-1]["role"] == "tool"
    assert llm.requests[1]["messages"][-1]["content"] == "No user matches 'Dobkin'."


@pytest.fixture(scope="module")
def other_server():
    """The official SDK's MCPServer (tests/client/sdk_tool_server.py) in its own process."""
    with mcp_script_server(ROOT / "tests" / "client" / "sdk_tool_server.py") as url:
        yield url


@pytest.mark.parametrize("client", ["sdk", "qmcp"])
def test_tools_of_two_servers_with_a_clashing_name_run_in_parallel(
    agent_env, other_server, capsys, client
):
    """QMCP and the SDK's server both have echo: it is offered as qmcp__echo and
    other__echo, every other name as it is. Four calls in one turn run at once (the two
    rendezvous calls meet), and each result goes back under its own call id."""

    def brain(body):
        if body["messages"][-1]["role"] == "user":
            return call(
                ("rendezvous", {"group": client, "name": "a"}),
                ("rendezvous", {"group": client, "name": "b"}),
                ("qmcp__echo", {"message": "hi"}),
                ("other__echo", {"message": "hi"}),
            )
        return say("done")

    with ScriptedLLM(brain) as llm:
        agent_env(llm)
        code = main(
            ["ping both", "--mcp-client", client, f"--mcp=other={other_server}"]
            + ["--mcp-header", "other=X-Api-Key: other-secret"]
        )
    out = capsys.readouterr()
    assert code == 0, out.err
    offered = [t["function"]["name"] for t in llm.requests[0]["tools"]]
    assert "qmcp__echo" in offered and "other__echo" in offered and "echo" not in offered
    assert "rendezvous" in offered and "search_users" in offered
    assert len(offered) == len(set(offered))
    other_echo = next(t for t in llm.requests[0]["tools"] if t["function"]["name"] == "other__echo")
    assert other_echo["function"]["parameters"]["required"] == ["message"]

    asked = {c["id"]: c["function"] for c in llm.requests[1]["messages"][-5]["tool_calls"]}
    answers = {m["tool_call_id"]: m["content"] for m in llm.requests[1]["messages"][-4:]}
    assert set(answers) == set(asked)
    by_call = {(asked[i]["name"], asked[i]["arguments"]): text for i, text in answers.items()}
    assert by_call[("rendezvous", f'{{"group": "{client}", "name": "a"}}')] == "met: a, b"
    assert by_call[("rendezvous", f'{{"group": "{client}", "name": "b"}}')] == "met: a, b"
    assert by_call[("qmcp__echo", '{"message": "hi"}')] == "hi"
    assert by_call[("other__echo", '{"message": "hi"}')] == "other echo: hi"
    assert out.out.count("→ ") == 4 and out.out.count("← ") == 4


def test_a_server_that_refuses_the_headers_is_a_clear_error(agent_env, other_server, capsys):
    with ScriptedLLM(lambda body: say("unused")) as llm:
        agent_env(llm)
        code = main(["hi", f"--mcp=other={other_server}", "--no-qmcp"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"error: Could not connect to MCP server 'other' at {other_server}")
    assert "Traceback" not in err and llm.requests == []


def decide_when_asked(qmcp_server, reviewer_token, decision, comment):
    """A reviewer who decides the first pending request (over REST, as a person would)."""

    def run():
        with QMCPClient(qmcp_server.url, reviewer_token) as reviewer:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pending = reviewer.list_human_requests(status="pending").items
                if pending:
                    reviewer.respond(pending[0].id, decision, comment=comment)
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def delete_brain(body):
    results = last_tool_results(body)
    if body["messages"][-1]["role"] == "user":
        user_id = int(re.search(r"#(\d+)", body["messages"][-1]["content"]).group(1))
        return call(("delete_user", {"user_id": user_id}))
    return say(f"Outcome: {results['delete_user']}")


@pytest.mark.parametrize(
    "client, decision, comment",
    [
        ("sdk", "approve", ""),
        ("qmcp", "approve", ""),
        ("sdk", "reject", "Not today: she is still on the payroll."),
        ("qmcp", "reject", "Not today: she is still on the payroll."),
    ],
)
def test_a_gated_delete_waits_for_the_reviewer(
    agent_env, qmcp_server, reviewer_token, capsys, client, decision, comment
):
    """The call shows "waiting for approval" with the request's page and the server's
    progress; approved, the user is deleted; rejected, the reviewer's comment reaches the
    model as the tool's error in the next request."""
    target = UserFactory()
    with ScriptedLLM(delete_brain) as llm:
        agent_env(llm)
        reviewer = decide_when_asked(qmcp_server, reviewer_token, decision, comment)
        code = main([f"Delete user #{target.pk}", "--mcp-client", client])
        reviewer.join(5)
    out = capsys.readouterr()
    assert code == 0, out.err
    request = HumanRequest.objects.get()
    lines = out.out.splitlines()
    assert lines[0] == f'→ delete_user {{"user_id": {target.pk}}}'
    link = f"{qmcp_server.url}/hitl/{request.pk}/"
    assert f"… delete_user is waiting for approval: {link}" in lines, "\n".join(lines)
    assert "… delete_user: Waiting for approval (0)" in lines
    waiting = (
        f"[qmcp info] Waiting for a reviewer to approve 'delete_user' "
        f"(approval request {request.pk}, /hitl/{request.pk}/)."
    )
    assert waiting in lines
    tool_message = llm.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    if decision == "approve":
        assert not User.objects.filter(pk=target.pk).exists()
        assert tool_message["content"].startswith(f"Deleted user #{target.pk}")
        assert any(line.startswith(f"← delete_user: Deleted user #{target.pk}") for line in lines)
    else:
        assert User.objects.filter(pk=target.pk).exists()
        assert tool_message["content"] == f"Error: Rejected by a reviewer: {comment}"
        assert f"← delete_user (error): Rejected by a reviewer: {comment}" in lines
        assert lines[-1] == f"assistant> Outcome: Error: Rejected by a reviewer: {comment}"


def test_429_then_200_is_retried_and_reported(agent_env, capsys):
    with ScriptedLLM(lambda body: say("pong")) as llm:
        llm.fail_first = [(429, {"retry-after-ms": "10"}), (503, {"retry-after-ms": "10"})]
        agent_env(llm)
        code = main(["ping"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.splitlines() == ["assistant> pong"]
    assert out.err.splitlines() == [
        "LLM API: HTTP 429; retry 1 of 3 in 0.0 s",
        "LLM API: HTTP 503; retry 2 of 3 in 0.0 s",
    ]
    assert len(llm.requests) == 3


def test_failures_past_the_retries_and_timeouts_are_clear_errors(agent_env, capsys):
    with ScriptedLLM(lambda body: say("pong")) as llm:
        llm.fail_first = ["stall", (500, {"retry-after-ms": "10"}), (500, {})]
        agent_env(llm)
        code = main(["ping", "--llm-retries", "2", "--llm-timeout", "0.5"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0].startswith("LLM API: no answer within 0.5 s; retry 1 of 2 in ")
    assert err[1] == "LLM API: HTTP 500; retry 2 of 2 in 0.0 s"
    assert err[2] == (
        f"error: The LLM API at {llm.url} answered HTTP 500 after 2 retries: Scripted failure 500."
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--api-key", "sk-wrong"],
            "error: The LLM API at {url} refused the API key (HTTP 401: Incorrect API key "
            "provided.). Set OPENAI_API_KEY or --api-key.",
        ),
        (
            ["--model", "no-such-model"],
            "error: The LLM API at {url} has no model 'no-such-model' (HTTP 404: The model "
            "`no-such-model` does not exist.). Set QMCP_LLM_MODEL or --model (and check "
            "QMCP_LLM_BASE_URL).",
        ),
    ],
)
def test_a_bad_key_or_model_is_a_clear_message_not_a_traceback(agent_env, capsys, flags, message):
    with ScriptedLLM(lambda body: say("unused")) as llm:
        agent_env(llm)
        code = main(["ping", *flags])
    out = capsys.readouterr()
    assert code == 1
    assert out.err.strip() == message.format(url=llm.url)
    assert len(llm.requests) == 1  # refused at once, never retried


def test_the_step_limit_stops_a_model_that_never_answers(agent_env, capsys):
    with ScriptedLLM(lambda body: call(("echo", {"message": "again"}))) as llm:
        agent_env(llm)
        code = main(["loop", "--max-steps", "3"])
    out = capsys.readouterr()
    assert code == 1
    assert out.out.count("→ echo") == 3 and len(llm.requests) == 3
    assert out.err.strip() == (
        "error: Stopped after 3 requests to the model without a final answer (--max-steps)."
    )


def test_the_interactive_chat_keeps_its_history(qmcp_server, agent_token):
    def brain(body):
        if body["messages"][-1]["content"] == "What did you do?":
            return say(f"{len(body['messages'])} messages so far.")
        return dobkin_brain(body)

    with ScriptedLLM(brain) as llm:
        done = run_agent(
            qmcp_server,
            agent_token,
            llm,
            "--mcp-client",
            "qmcp",
            input=f"{QUERY}\nWhat did you do?\n",
        )
    assert done.returncode == 0, done.stderr
    assert "→ add_user" in done.stdout
    follow_up = llm.requests[-1]["messages"]
    # system, user, the search (call + result), the add (call + result), the answer, user.
    assert [m["role"] for m in follow_up] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert follow_up[1]["content"] == QUERY
    lines = done.stdout.splitlines()
    assert lines[0] == f"you> {QUERY}"
    assert lines[-3:] == ["you> What did you do?", "assistant> 8 messages so far.", "you> "]
    assert f"{MODEL} with " in done.stderr and KEY not in done.stderr + done.stdout


@pytest.fixture
def short_wait_server(qmcp_server):
    """A second QMCP on the test database whose gated calls close their stream after 1 s
    (QMCP_MCP_APPROVAL_WAIT_SECONDS), so that a client must resume it to hear the decision."""
    from tests.live import LiveServer

    server = LiveServer(env={"QMCP_MCP_APPROVAL_WAIT_SECONDS": "1"}).start()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("client", ["sdk", "qmcp"])
def test_a_decision_after_the_servers_bounded_wait_still_reaches_the_agent(
    monkeypatch, short_wait_server, agent_token, reviewer_token, capsys, client
):
    """The reviewer decides after the server has closed the call's stream: both MCP clients
    resume it after Last-Event-ID and the agent gets the call's result."""
    target = UserFactory()

    def decide_late():
        with QMCPClient(short_wait_server.url, reviewer_token) as reviewer:
            deadline = time.monotonic() + 30
            while not (pending := reviewer.list_human_requests(status="pending").items):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(2.5)  # past the server's 1 s wait
            reviewer.approve(pending[0].id)

    reviewer = threading.Thread(target=decide_late, daemon=True)
    with ScriptedLLM(delete_brain) as llm:
        for key, value in {**llm.env(), "QMCP_URL": short_wait_server.url}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("QMCP_TOKEN", agent_token)
        reviewer.start()
        code = main([f"Delete user #{target.pk}", "--mcp-client", client])
        reviewer.join(10)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert not User.objects.filter(pk=target.pk).exists()
    assert llm.requests[1]["messages"][-1]["content"].startswith(f"Deleted user #{target.pk}")
    assert "… delete_user is waiting for approval: " in out.out
