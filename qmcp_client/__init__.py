"""A Python client for QMCP: the /v1 REST API, MCP over Streamable HTTP, and a CLI.

Needs only httpx and pydantic (never Django)::

    from qmcp_client import QMCPClient
    with QMCPClient("http://127.0.0.1:8000", token) as qmcp:
        print(qmcp.call_tool("echo", message="hi").text)
"""

from qmcp_client.errors import (
    AuthenticationError,
    Conflict,
    MCPError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QMCPConnectionError,
    QMCPError,
    ServerError,
    ToolFailed,
    ValidationError,
    WaitTimeout,
)
from qmcp_client.mcp import CallToolResult, MCPClient, SyncMCPClient, tools_to_openai
from qmcp_client.models import (
    Health,
    HumanRequest,
    HumanResponse,
    Invocation,
    InvocationSummary,
    Page,
    Policy,
    PolicyExplanation,
    Tool,
)
from qmcp_client.rest import OPERATIONS, AsyncQMCPClient, QMCPClient

__version__ = "0.1.0"

__all__ = [
    "OPERATIONS",
    "AsyncQMCPClient",
    "AuthenticationError",
    "CallToolResult",
    "Conflict",
    "Health",
    "HumanRequest",
    "HumanResponse",
    "Invocation",
    "InvocationSummary",
    "MCPClient",
    "MCPError",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PermissionDenied",
    "Policy",
    "PolicyExplanation",
    "QMCPClient",
    "QMCPConnectionError",
    "QMCPError",
    "ServerError",
    "SyncMCPClient",
    "Tool",
    "ToolFailed",
    "ValidationError",
    "WaitTimeout",
    "tools_to_openai",
]
