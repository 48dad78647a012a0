"""The MCP methods QMCP serves, one module per family, and the one dispatch over them.

``METHODS`` is the 2025 line's table (with sessions), ``STATELESS_METHODS`` the 2026-07-28
revision's; the capabilities QMCP advertises are derived from them. The lifecycle methods
(initialize, server/discover, ping, logging/setLevel) live here, beside the tables they
describe.
"""

from typing import Any

from mcp_transport.http import ALL_VERSIONS, META_SERVER_INFO, STATELESS_VERSION
from mcp_transport.jsonrpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RpcError,
    rpc_error,
    rpc_error_for,
    rpc_result,
)
from mcp_transport.methods import tasks_2026
from mcp_transport.methods.exchange import (
    INSTRUCTIONS,
    LATEST_VERSION,
    LOG_LEVELS,
    SERVER_INFO,
    SUPPORTED_VERSIONS,
    TASKS_EXTENSION,
    TASKS_VERSION,
    Exchange,
    require,
)
from mcp_transport.methods.prompts import (
    handle_completion_complete,
    handle_prompts_get,
    handle_prompts_list,
)
from mcp_transport.methods.resources import (
    handle_resource_templates_list,
    handle_resources_list,
    handle_resources_read,
    handle_resources_subscribe,
    handle_resources_unsubscribe,
)
from mcp_transport.methods.skills import (
    handle_directory_read,
    handle_skills_get,
    handle_skills_list,
)
from mcp_transport.methods.subscriptions import handle_subscriptions_listen
from mcp_transport.methods.tasks import (
    handle_tasks_cancel,
    handle_tasks_get,
    handle_tasks_list,
    handle_tasks_result,
)
from mcp_transport.methods.tools import handle_tools_call, handle_tools_list
from mcp_transport.sessions import session_create, session_update
from mcp_transport.skills import EXTENSION as SKILLS_EXTENSION
from qmcp_site.errors import ApplicationError
from qmcp_site.storable import storable_check


def handle_initialize(ex: Exchange, params: dict) -> dict:
    requested = require(params, "protocolVersion", str)
    capabilities = require(params, "capabilities", dict)
    client_info = require(params, "clientInfo", dict)
    version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
    ex.session = session_create(
        principal=ex.principal,
        protocol_version=version,
        client_info=client_info,
        client_capabilities=capabilities,
    )
    ex.protocol_version = version
    return {
        "protocolVersion": version,
        "capabilities": server_capabilities(version),
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
    }


EXTENSIONS_VERSION = "2025-11-25"


def server_capabilities(version: str) -> dict[str, Any]:
    """What QMCP serves in ``version``, derived from that era's method table."""
    methods = STATELESS_METHODS if version == STATELESS_VERSION else METHODS
    capabilities: dict[str, Any] = {}
    if "tools/list" in methods:
        capabilities["tools"] = {"listChanged": False}
    if "resources/list" in methods:
        capabilities["resources"] = {"listChanged": False}
        if "resources/subscribe" in methods or "subscriptions/listen" in methods:
            capabilities["resources"]["subscribe"] = True
    if "prompts/list" in methods:
        capabilities["prompts"] = {"listChanged": False}
    if "logging/setLevel" in methods or version == STATELESS_VERSION:
        capabilities["logging"] = {}
    if "completion/complete" in methods:
        capabilities["completions"] = {}
    # Extensions (SEP-2133) are declared from 2025-11-25 on; SEP-2640 serves both eras.
    if "skills/list" in methods and version >= EXTENSIONS_VERSION:
        extensions = capabilities.setdefault("extensions", {})
        extensions[SKILLS_EXTENSION] = {"directoryRead": "resources/directory/read" in methods}
    if "tasks/get" in methods and TASKS_VERSION <= version < STATELESS_VERSION:
        capabilities["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    if "tasks/update" in methods:  # 2026-07-28: tasks are an extension (SEP-2663)
        capabilities.setdefault("extensions", {})[TASKS_EXTENSION] = {}
    return capabilities


def handle_discover(ex: Exchange, params: dict) -> dict:
    """server/discover (2026-07-28): the versions, capabilities and identity of QMCP."""
    return {
        "supportedVersions": list(ALL_VERSIONS),
        "capabilities": server_capabilities(STATELESS_VERSION),
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
        "_meta": {META_SERVER_INFO: SERVER_INFO},
    }


def handle_ping(ex: Exchange, params: dict) -> dict:
    return {}


def handle_logging_set_level(ex: Exchange, params: dict) -> dict:
    level = require(params, "level", str)
    if level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {list(LOG_LEVELS)}.")
    session_update(session=ex.session, log_level=level)
    return {}


METHODS = {
    "initialize": handle_initialize,
    "ping": handle_ping,
    "tools/list": handle_tools_list,
    "tools/call": handle_tools_call,
    "resources/list": handle_resources_list,
    "resources/templates/list": handle_resource_templates_list,
    "resources/read": handle_resources_read,
    "resources/subscribe": handle_resources_subscribe,
    "resources/unsubscribe": handle_resources_unsubscribe,
    "prompts/list": handle_prompts_list,
    "prompts/get": handle_prompts_get,
    "completion/complete": handle_completion_complete,
    "logging/setLevel": handle_logging_set_level,
    "tasks/get": handle_tasks_get,
    "tasks/result": handle_tasks_result,
    "tasks/list": handle_tasks_list,
    "tasks/cancel": handle_tasks_cancel,
    "skills/list": handle_skills_list,
    "skills/get": handle_skills_get,
    "resources/directory/read": handle_directory_read,
}


# The 2026-07-28 revision: stateless, so nothing that needs a session.
STATELESS_METHODS = {
    "server/discover": handle_discover,
    "subscriptions/listen": handle_subscriptions_listen,
    **{
        name: METHODS[name]
        for name in (
            "tools/list",
            "tools/call",
            "resources/list",
            "resources/templates/list",
            "resources/read",
            "prompts/list",
            "prompts/get",
            "completion/complete",
            "skills/list",
            "skills/get",
            "resources/directory/read",
        )
    },
    "tasks/get": tasks_2026.handle_tasks_get,
    "tasks/update": tasks_2026.handle_tasks_update,
    "tasks/cancel": tasks_2026.handle_tasks_cancel,
}


def handle_request(
    ex: Exchange, method: str, params: Any, methods: dict = METHODS
) -> dict[str, Any] | None:
    """The JSON-RPC reply to one request, or None when a continuation will answer it."""
    handler = methods.get(method)
    if handler is None:
        return rpc_error(ex.rpc_id, METHOD_NOT_FOUND, f"Method not found: {method}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return rpc_error(ex.rpc_id, INVALID_PARAMS, "Invalid params: params must be an object.")
    meta = params.get("_meta")
    if isinstance(meta, dict):
        ex.outbound.progress_token = meta.get("progressToken")
    try:
        if method != "tools/call":  # a call's arguments are checked, and audited, by tools
            storable_check(params, what="params")
        result = handler(ex, params)
    except RpcError as exc:
        return rpc_error(ex.rpc_id, exc.code, exc.message, exc.data)
    except ApplicationError as exc:
        return rpc_error_for(ex.rpc_id, exc)
    if result is None:
        return None
    return rpc_result(ex.rpc_id, result)
