"""The ``qmcp`` command (also ``python -m qmcp_client``).

    qmcp agent "Check if Arkadiy Dobkin is present as a user, if not then add him"
    python -m qmcp_client tools list
    python -m qmcp_client tools call echo --arg message=hi
    python -m qmcp_client requests list --status pending
    python -m qmcp_client requests respond ID --approve --comment "looks fine"

The server and token come from ``--url``/``--token`` or ``QMCP_URL``/``QMCP_TOKEN``. A
call that waits for approval shows a spinner on stderr until a reviewer decides. Exit
codes: 0 ok, 1 the server refused or the call did not succeed, 2 usage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from typing import Any

from qmcp_client.errors import QMCPError
from qmcp_client.models import HumanRequest, Invocation
from qmcp_client.rest import DEFAULT_URL, QMCPClient

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def parse_arg(text: str) -> tuple[str, Any]:
    """``k=v`` with ``v`` read as JSON when it parses (``n=3``, ``flag=true``, ``x=[1]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--arg expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser(prog: str = "python -m qmcp_client") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Call QMCP's tools and answer its reviews, or run the LLM agent."
    )
    parser.add_argument("--url", help=f"server URL (QMCP_URL, default {DEFAULT_URL})")
    parser.add_argument("--token", help="API token (QMCP_TOKEN)")
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{tools,requests,agent}")
    # Listed for --help only: main() hands `agent ...` to the agent's own parser.
    groups.add_parser("agent", help="an LLM agent that uses the tools (qmcp agent --help)")

    tools = groups.add_parser("tools", help="list and call tools")
    tools_cmd = tools.add_subparsers(dest="command", required=True)
    tools_cmd.add_parser("list", help="list the tools")
    call = tools_cmd.add_parser("call", help="call a tool (waiting for approval if needed)")
    call.add_argument("name")
    call.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE", help="an argument (repeat)"
    )
    call.add_argument("--args", dest="args_json", metavar="JSON", help="arguments as a JSON object")
    call.add_argument(
        "--wait", type=float, default=3600.0, help="seconds to wait for a decision (3600)"
    )
    call.add_argument("--poll-interval", type=float, default=1.0)
    call.add_argument("--no-wait", action="store_true", help="do not wait for a decision")

    requests = groups.add_parser("requests", help="the human approval queue")
    requests_cmd = requests.add_subparsers(dest="command", required=True)
    listing = requests_cmd.add_parser("list", help="list human requests")
    listing.add_argument("--status", help="pending, responded, expired, cancelled")
    listing.add_argument("--page", type=int, default=1)
    respond = requests_cmd.add_parser("respond", help="approve, reject or answer a request")
    respond.add_argument("id")
    decision = respond.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true")
    decision.add_argument("--reject", action="store_true")
    decision.add_argument("--answer", metavar="TEXT", help="answer a question")
    respond.add_argument("--option", default="", help="the chosen option of a question")
    respond.add_argument("--comment", default="")
    return parser


class Spinner:
    """A spinner on stderr while waiting (a plain line when stderr is not a terminal)."""

    FRAMES = "|/-\\"

    def __init__(self, message: str, stream=None):
        self.message = message
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self.started = time.monotonic()

    def _spin(self) -> None:
        for frame in itertools.cycle(self.FRAMES):
            if self._stop.wait(0.1):
                return
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r{frame} {self.message} ({elapsed:.0f}s)")
            self.stream.flush()

    def __enter__(self) -> Spinner:
        if self.tty:
            self._thread.start()
        else:
            self.stream.write(f"{self.message}...\n")
            self.stream.flush()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.tty:
            self._thread.join()
            self.stream.write("\r\033[K")
        self.stream.write(f"waited {time.monotonic() - self.started:.1f}s\n")
        self.stream.flush()


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, ensure_ascii=False)


def print_invocation(invocation: Invocation, as_json: bool) -> int:
    if as_json:
        print(_dump(invocation.model_dump(mode="json")))
    elif invocation.status == "succeeded":
        print(invocation.text or _dump(invocation.structured))
    if invocation.status == "succeeded":
        return EXIT_OK
    if invocation.status == "awaiting_approval":
        if not as_json:
            print(f"awaiting approval: human request {invocation.human_request_id}")
        return EXIT_OK
    error = invocation.error or {}
    message = error.get("message") or invocation.text or ""
    print(f"error: the call ended as {invocation.status}. {message}".strip(), file=sys.stderr)
    return EXIT_ERROR


def print_request(request: HumanRequest) -> None:
    outcome = f" {request.outcome}" if request.outcome else ""
    tool = f" [{request.invocation.tool}]" if request.invocation else ""
    print(f"{request.id}  {request.status}{outcome}  {request.kind}{tool}  {request.title}")


def run(args: argparse.Namespace, client: QMCPClient) -> int:
    if args.group == "tools" and args.command == "list":
        tools = client.list_tools()
        if args.json:
            print(_dump([t.model_dump(mode="json") for t in tools]))
        else:
            width = max((len(t.name) for t in tools), default=0)
            for tool in tools:
                gated = " (approval)" if tool.policy.requires_approval else ""
                summary = (tool.description or "").splitlines()[0] if tool.description else ""
                print(f"{tool.name:<{width}}  {summary}{gated}")
        return EXIT_OK

    if args.group == "tools" and args.command == "call":
        arguments: dict[str, Any] = {}
        if args.args_json:
            try:
                arguments = json.loads(args.args_json)
            except ValueError as exc:
                raise UsageError(f"--args is not JSON: {exc}") from exc
            if not isinstance(arguments, dict):
                raise UsageError("--args must be a JSON object")
        arguments.update(parse_arg(text) for text in args.arg)
        invocation = client.call_tool(args.name, arguments)
        if invocation.awaiting_approval and not args.no_wait:
            message = (
                f"Waiting for a reviewer to approve {args.name} "
                f"(request {invocation.human_request_id})"
            )
            with Spinner(message):
                client.wait_for_response(
                    invocation.human_request_id, timeout=args.wait, poll_interval=args.poll_interval
                )
                invocation = client.wait_for_invocation(
                    invocation.id, timeout=max(args.wait, 30), poll_interval=0.25
                )
        return print_invocation(invocation, args.json)

    if args.group == "requests" and args.command == "list":
        page = client.list_human_requests(status=args.status, page=args.page)
        if args.json:
            print(_dump(page.model_dump(mode="json")))
        else:
            for request in page.items:
                print_request(request)
            if page.has_next:
                print(f"(page {page.page}; {page.count} in all; --page {page.page + 1})")
        return EXIT_OK

    if args.group == "requests" and args.command == "respond":
        if args.approve:
            decision, answer = "approve", ""
        elif args.reject:
            decision, answer = "reject", ""
        else:
            decision, answer = "answer", args.answer
        request = client.respond(
            args.id, decision, option=args.option, answer=answer, comment=args.comment
        )
        if args.json:
            print(_dump(request.model_dump(mode="json")))
        else:
            print_request(request)
        return EXIT_OK
    raise UsageError("unknown command")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "qmcp" if os.path.basename(sys.argv[0]) == "qmcp" else "python -m qmcp_client"
    if argv[:1] == ["agent"]:
        from qmcp_client.agent.cli import main as agent_main

        return agent_main(argv[1:], prog=f"{prog} agent")
    parser = build_parser(prog)
    args = parser.parse_args(argv)  # exits 2 on bad usage
    url = args.url or os.environ.get("QMCP_URL") or DEFAULT_URL
    token = args.token or os.environ.get("QMCP_TOKEN")
    if not token:
        parser.print_usage(sys.stderr)
        print("error: a token is required: --token or QMCP_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    try:
        with QMCPClient(url, token, timeout=args.timeout) as client:
            return run(args, client)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QMCPError as exc:
        status = f", HTTP {exc.status}" if exc.status else ""
        print(f"error: {exc.message} ({exc.code}{status})", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
