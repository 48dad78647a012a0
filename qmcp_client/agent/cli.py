"""``qmcp agent`` / ``python -m qmcp_client.agent``: an LLM agent over QMCP's tools.

    python -m qmcp_client.agent "Check if Arkadiy Dobkin is present as a user, if not then add him"
    python -m qmcp_client.agent                      # an interactive chat that keeps its history

The model: ``--base-url`` (QMCP_LLM_BASE_URL or OPENAI_BASE_URL; OpenAI's API when unset),
``--api-key`` (OPENAI_API_KEY; any value for a local server), ``--model`` (QMCP_LLM_MODEL).
The tools: QMCP at ``--url``/``--token`` (QMCP_URL, QMCP_TOKEN), and any other Streamable
HTTP server given with ``--mcp NAME=URL`` and its headers with ``--mcp-header NAME=Key:Value``.
Exit codes: 0 answered, 1 the LLM API, an MCP server or the step limit stopped it, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from qmcp_client.agent.settings import DEFAULT_MAX_STEPS, DEFAULT_MODEL, LLMSettings
from qmcp_client.rest import DEFAULT_URL

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
QUIT = {"", "exit", "quit", "/exit", "/quit"}


class UsageError(Exception):
    pass


def build_parser(prog: str = "python -m qmcp_client.agent") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="An LLM agent that works through QMCP's tools (and any other MCP server's), "
        "over any OpenAI-compatible chat-completions API. Gated calls wait for a reviewer.",
    )
    parser.add_argument("query", nargs="?", help="one request; without it, an interactive chat")
    llm = parser.add_argument_group("the model")
    llm.add_argument("--base-url", help="API base URL (QMCP_LLM_BASE_URL, OPENAI_BASE_URL)")
    llm.add_argument("--api-key", help="API key (OPENAI_API_KEY)")
    llm.add_argument("--model", help=f"model name (QMCP_LLM_MODEL, default {DEFAULT_MODEL})")
    llm.add_argument("--no-stream", action="store_true", help="ask for whole answers")
    llm.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per request")
    llm.add_argument("--llm-retries", type=int, default=3, help="retries on 429, 5xx, timeouts")
    llm.add_argument(
        "--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="model requests per query"
    )
    llm.add_argument("--system", help="the system prompt")
    mcp = parser.add_argument_group("the MCP servers")
    mcp.add_argument("--url", help=f"QMCP's URL (QMCP_URL, default {DEFAULT_URL})")
    mcp.add_argument("--token", help="QMCP API token (QMCP_TOKEN)")
    mcp.add_argument("--no-qmcp", action="store_true", help="use only the --mcp servers")
    mcp.add_argument(
        "--mcp", action="append", default=[], metavar="NAME=URL", help="another server (repeat)"
    )
    mcp.add_argument(
        "--mcp-header",
        action="append",
        default=[],
        metavar="NAME=KEY:VALUE",
        help="an HTTP header for server NAME (repeat)",
    )
    mcp.add_argument(
        "--mcp-client",
        choices=["sdk", "qmcp"],
        default="sdk",
        help="the official MCP SDK's client (default) or QMCP's hand-written one",
    )
    return parser


def server_specs(args: argparse.Namespace) -> list:
    """The servers to connect to, from the flags and the environment."""
    from qmcp_client.agent.servers import ServerSpec

    specs = []
    if not args.no_qmcp:
        token = args.token or os.environ.get("QMCP_TOKEN")
        if not token:
            raise UsageError("a QMCP token is required: --token or QMCP_TOKEN (or --no-qmcp)")
        specs.append(ServerSpec.qmcp(args.url or os.environ.get("QMCP_URL") or DEFAULT_URL, token))
    for text in args.mcp:
        name, sep, url = text.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise UsageError(f"--mcp expects NAME=http(s)://..., got {text!r}")
        if any(spec.name == name for spec in specs):
            raise UsageError(f"two MCP servers are named {name!r}")
        specs.append(ServerSpec(name=name, url=url))
    by_name = {spec.name: spec for spec in specs}
    for text in args.mcp_header:
        name, _, header = text.partition("=")
        key, sep, value = header.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"--mcp-header expects NAME=KEY:VALUE, got {text!r}")
        if name not in by_name:
            raise UsageError(f"--mcp-header names no server: {name!r}")
        by_name[name].headers[key.strip()] = value.strip()
    if not specs:
        raise UsageError("no MCP server: give --mcp NAME=URL, or drop --no-qmcp")
    return specs


def llm_settings(args: argparse.Namespace):
    base_url = (
        args.base_url or os.environ.get("QMCP_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    )
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if not base_url and not api_key:
        raise UsageError(
            "no API key: set OPENAI_API_KEY, or QMCP_LLM_BASE_URL for a local server "
            "(Ollama, vLLM, LM Studio)"
        )
    if args.max_steps < 1 or args.llm_retries < 0:
        raise UsageError("--max-steps must be at least 1 and --llm-retries not negative")
    return LLMSettings(
        model=args.model or os.environ.get("QMCP_LLM_MODEL") or DEFAULT_MODEL,
        base_url=base_url or None,
        api_key=api_key or None,
        stream=not args.no_stream,
        timeout=args.llm_timeout,
        retries=args.llm_retries,
    )


async def converse(args: argparse.Namespace, specs: list, settings) -> int:
    """Connects to the servers, then answers the query or chats until the user stops."""
    from qmcp_client.agent.console import Console
    from qmcp_client.agent.llm import ChatModel, LLMError
    from qmcp_client.agent.loop import SYSTEM_PROMPT, Agent, StepLimitReached
    from qmcp_client.agent.servers import ToolBox

    console = Console()
    model = ChatModel(settings, on_text=console.text, on_retry=console.retry)
    try:
        async with ToolBox(specs, client=args.mcp_client, on_log=console.log) as tools:
            agent = Agent(
                model,
                tools,
                console,
                max_steps=args.max_steps,
                system_prompt=args.system or SYSTEM_PROMPT,
            )
            if args.query:
                try:
                    await agent.ask(args.query)
                except (LLMError, StepLimitReached) as exc:
                    console.notice(f"error: {exc}")
                    return EXIT_ERROR
                return EXIT_OK
            servers = ", ".join(spec.name for spec in specs)
            console.notice(
                f"{settings.model} with {len(tools.functions)} tools from {servers}. "
                "An empty line, 'exit' or Ctrl-D ends the chat."
            )
            while True:
                try:
                    query = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    print()
                    return EXIT_OK
                if not sys.stdin.isatty():  # a piped chat: the transcript shows the question
                    print(query)
                if query.strip().lower() in QUIT:
                    return EXIT_OK
                try:
                    await agent.ask(query)
                except (LLMError, StepLimitReached) as exc:
                    console.notice(f"error: {exc}")
    finally:
        await model.close()


def main(argv: list[str] | None = None, prog: str = "python -m qmcp_client.agent") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)  # exits 2 on bad usage
    try:
        specs = server_specs(args)
        settings = llm_settings(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        import openai  # noqa: F401

        if args.mcp_client == "sdk":
            import mcp  # noqa: F401
    except ImportError as exc:
        print(
            f"error: the agent needs {exc.name}: pip install 'qmcp-client[agent]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    from qmcp_client.agent.servers import ConnectionFailed

    try:
        return asyncio.run(converse(args, specs, settings))
    except ConnectionFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
