"""A sync MCP client for tests: calls handle_post, handle_get and handle_delete of
:mod:`mcp_transport.protocol` directly, with no ASGI layer."""

import json

from pydantic import Field

from mcp_transport.models import McpSession
from mcp_transport.protocol import PostReply, handle_post
from tools.schemas import ToolInput

LATEST = "2025-11-25"
NEXT = "2026-07-28"
OLDEST = "2025-03-26"
CLIENT_INFO = {"name": "pytest-client", "version": "1.0"}


def rpc(method, params=None, rpc_id=1):
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize_params(version=LATEST, **overrides):
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT_INFO}
    params.update(overrides)
    return params


class Answers:
    """``result`` and ``error`` over a client's ``request`` (a JSON-RPC body)."""

    def result(self, method, params=None) -> dict:
        body = self.request(method, params)
        assert "error" not in body, body
        return body["result"]

    def error(self, method, params=None) -> dict:
        body = self.request(method, params)
        assert "result" not in body, body
        return body["error"]


class Mcp(Answers):
    """An MCP client for one token that calls the protocol functions directly."""

    def __init__(self, secret: str | None):
        self.secret = secret
        self.session_id = ""
        self.version = LATEST

    def headers(self, **extra) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.secret}"} if self.secret else {}
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
            headers["mcp-protocol-version"] = self.version
        headers.update(extra)
        return {k: v for k, v in headers.items() if v is not None}

    def post(self, payload, **extra) -> PostReply:
        return handle_post(headers=self.headers(**extra), payload=payload)

    def initialize(self, version=LATEST) -> dict:
        reply = handle_post(
            headers=self.headers(), payload=rpc("initialize", initialize_params(version))
        )
        assert reply.status == 200, reply
        self.session_id = reply.headers["mcp-session-id"]
        self.version = reply.body["result"]["protocolVersion"]
        return reply.body

    def request(self, method, params=None, rpc_id=1) -> dict:
        """The JSON body of a request answered with plain JSON."""
        reply = self.post(rpc(method, params, rpc_id))
        assert reply.status == 200 and reply.stream_id is None, reply
        assert reply.body["id"] == rpc_id
        return reply.body

    def session(self) -> McpSession:
        return McpSession.objects.get(pk=self.session_id)


def sse_messages(reply) -> list[dict]:
    """The JSON-RPC messages of an SSE reply, without the priming event."""
    return [json.loads(data) for _, data in reply.events if data]


class ChattyInput(ToolInput):
    progress: int = Field(default=2, ge=0)
    logs: list[str] = Field(default_factory=list)


class Stateless(Answers):
    """A 2026-07-28 client: every request carries its version and capabilities, and the
    headers that mirror them."""

    NAMED = {"resources/read": "uri"}

    def __init__(self, secret):
        self.secret = secret

    def request(self, method, params=None) -> dict:
        params = {
            **(params or {}),
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": NEXT,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        }
        headers = {
            "authorization": f"Bearer {self.secret}",
            "mcp-protocol-version": NEXT,
            "mcp-method": method,
        }
        if method in self.NAMED:
            headers["mcp-name"] = params[self.NAMED[method]]
        reply = handle_post(headers=headers, payload=rpc(method, params))
        assert reply.status == 200 and reply.stream_id is None, reply
        return reply.body
