"""Reference server for benchmarks: the official MCP Python SDK (mcp 2.3.0) serving one tool.

Starts the SDK's own Streamable HTTP server (lowlevel ``mcp.server.Server`` +
``StreamableHTTPSessionManager``) with stateful sessions and JSON responses
(``json_response=True``, ``stateless_http=False``): the SDK's fastest stateful mode, and
the shape QMCP answers plain calls in. Served by uvicorn (uvloop, httptools) in a single
process at ``http://127.0.0.1:<port>/mcp``.

Tool ``echo`` takes ``{"message": str}`` and returns the message as one text
content block.

Usage:
    python benchmarks/sdk_echo_server.py --port 8765

Clients that send the ``initialize`` handshake (e.g. ``mcp.Client(url,
mode="legacy")`` or ``ClientSession.initialize()``) get an ``Mcp-Session-Id``
session. A request carrying ``MCP-Protocol-Version: 2026-07-28`` (what
``mcp.Client``'s default ``mode="auto"`` sends) is routed by the SDK to its
sessionless 2026 path instead.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server import Server, ServerRequestContext

ECHO_TOOL = types.Tool(
    name="echo",
    description="Return the given message unchanged.",
    input_schema={
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
    },
)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[ECHO_TOOL])


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    if params.name != "echo":
        return types.CallToolResult(
            content=[types.TextContent(text=f"Unknown tool: {params.name}")], is_error=True
        )
    message = (params.arguments or {}).get("message")
    if not isinstance(message, str):
        return types.CallToolResult(
            content=[types.TextContent(text="'message' must be a string")], is_error=True
        )
    return types.CallToolResult(content=[types.TextContent(text=message)])


def build_app(host: str = "127.0.0.1"):
    server = Server("sdk-echo", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)
    # Stateful sessions, JSON responses. `host` drives the SDK's automatic
    # DNS-rebinding protection (Host/Origin must be 127.0.0.1/localhost/[::1]).
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=True,
        stateless_http=False,
        host=host,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mcp").setLevel(logging.WARNING)

    uvicorn.run(
        build_app(args.host),
        host=args.host,
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
