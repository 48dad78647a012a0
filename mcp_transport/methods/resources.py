"""resources/list, templates, read, subscribe and unsubscribe, over ``features``."""

from django.conf import settings

from mcp_transport import features
from mcp_transport.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, RESOURCE_NOT_FOUND, RpcError
from mcp_transport.methods.exchange import Exchange, require
from mcp_transport.sessions import session_update
from qmcp_site.errors import ApplicationError


def handle_resources_list(ex: Exchange, params: dict) -> dict:
    return {"resources": [r.describe() for r in features.RESOURCES.values()]}


def handle_resource_templates_list(ex: Exchange, params: dict) -> dict:
    return {"resourceTemplates": [t.describe() for t in features.TEMPLATES.values()]}


def handle_resources_read(ex: Exchange, params: dict) -> dict:
    uri = require(params, "uri", str)
    try:
        return {"contents": features.resource_read(principal=ex.principal, uri=uri)}
    except ApplicationError as exc:
        if exc.code == "not_found":
            # SEP-2164 (2026-07-28) standardises on -32602; the 2025 line used -32002.
            code = INVALID_PARAMS if ex.session is None else RESOURCE_NOT_FOUND
            raise RpcError(code, exc.message, {"uri": uri}) from exc
        raise


MAX_URI_LENGTH = 2048


def handle_resources_subscribe(ex: Exchange, params: dict) -> dict:
    uri = require(params, "uri", str)
    if len(uri) > MAX_URI_LENGTH:
        raise RpcError(INVALID_PARAMS, f"Invalid params: 'uri' is over {MAX_URI_LENGTH} chars.")
    limit = settings.QMCP_MCP_MAX_SUBSCRIPTIONS
    if uri not in ex.session.subscriptions and len(ex.session.subscriptions) >= limit:
        raise RpcError(
            INVALID_REQUEST,
            f"This session already has {limit} subscriptions, the most allowed; "
            "unsubscribe from one first.",
            {"limit": limit},
        )
    if uri not in ex.session.subscriptions:
        session_update(session=ex.session, subscriptions=[*ex.session.subscriptions, uri])
    return {}


def handle_resources_unsubscribe(ex: Exchange, params: dict) -> dict:
    uri = require(params, "uri", str)
    if uri in ex.session.subscriptions:
        remaining = [u for u in ex.session.subscriptions if u != uri]
        session_update(session=ex.session, subscriptions=remaining)
    return {}
