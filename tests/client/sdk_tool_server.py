"""A second MCP server for the agent's tests: the official SDK's ``MCPServer`` (FastMCP).

Its ``echo`` clashes with QMCP's; ``rendezvous`` returns only once two calls of it are
running at the same time (proof that the agent runs parallel tool calls in parallel). Every
request must carry ``X-Api-Key: other-secret`` (the agent's ``--mcp-header``).

    python tests/client/sdk_tool_server.py --port 8766
"""

import argparse
import asyncio

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.responses import JSONResponse

API_KEY = "other-secret"
RENDEZVOUS_SECONDS = 10.0

server = MCPServer("other")
_groups: dict[str, tuple[list[str], asyncio.Event]] = {}


@server.tool()
def echo(message: str) -> str:
    """Returns the message, marked as this server's."""
    return f"other echo: {message}"


@server.tool()
async def rendezvous(group: str, name: str) -> str:
    """Waits for a second caller in the group; says who met, or that nobody came."""
    arrived, all_here = _groups.setdefault(group, ([], asyncio.Event()))
    arrived.append(name)
    if len(arrived) >= 2:
        all_here.set()
    try:
        await asyncio.wait_for(all_here.wait(), RENDEZVOUS_SECONDS)
    except TimeoutError:
        return f"{name} waited alone"
    return "met: " + ", ".join(sorted(arrived))


def app():
    inner = server.streamable_http_app(host="127.0.0.1")

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"x-api-key") != API_KEY.encode():
                response = JSONResponse({"error": "missing or wrong X-Api-Key"}, status_code=401)
                return await response(scope, receive, send)
        return await inner(scope, receive, send)

    return guarded


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app(), host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")
