"""HTTP-level checks of /mcp, per protocol era.

The 2025 line negotiates a version in ``initialize`` and sends it in ``MCP-Protocol-Version``
on every later request of its session. The 2026-07-28 revision is stateless: every request
names its version, client capabilities and client info in ``params._meta``, mirrors the
version, its method and its target in headers (``MCP-Protocol-Version``, ``Mcp-Method``,
``Mcp-Name``, and ``Mcp-Param-<Name>`` for each tool argument whose schema says
``x-mcp-header: <Name>``), and is refused with HTTP 400 and -32020 when they disagree.
"""

import base64
import binascii
import re
from typing import Any

from django.conf import settings

from mcp_transport.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, rpc_error
from mcp_transport.models import McpSession
from mcp_transport.sessions import (
    SessionNotFound,
    session_authenticate,
    session_get,
    token_authenticate,
)
from qmcp_site.errors import ApplicationError
from qmcp_site.ratelimit import bearer_secret
from tools.registry import ToolSpec, get_tool
from users.models import ApiToken, User
from users.oauth import mcp_resource, mcp_resource_metadata_url
from users.principals import Principal

LEGACY_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
STATELESS_VERSION = "2026-07-28"
STATELESS_VERSIONS = (STATELESS_VERSION,)
ALL_VERSIONS = (*STATELESS_VERSIONS, *LEGACY_VERSIONS)
# A request without an MCP-Protocol-Version header (2025 line) is taken to speak this version.
DEFAULT_HEADER_VERSION = "2025-03-26"

HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

# The params field a method's Mcp-Name header mirrors.
NAMED_PARAMS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}


class HttpFailure(Exception):
    """The whole HTTP request fails: ``status`` with a JSON-RPC error body.

    The body carries ``rpc_id``, the id of the request when it could be read (see
    :func:`readable_id`), and null otherwise.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: int = INVALID_REQUEST,
        headers=None,
        rpc_id=None,
        data: Any = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.rpc_id = rpc_id
        self.data = data

    def body(self) -> dict[str, Any]:
        return rpc_error(self.rpc_id, self.code, self.message, self.data)


def readable_id(payload: Any) -> Any:
    """The id of a single JSON-RPC request, when it has a valid one; None otherwise."""
    if isinstance(payload, dict):
        rpc_id = payload.get("id")
        if isinstance(rpc_id, (str, int)) and not isinstance(rpc_id, bool):
            return rpc_id
    return None


def unsupported_version(requested: str, rpc_id=None) -> HttpFailure:
    return HttpFailure(
        400,
        f"Unsupported protocol version '{requested}'; supported: {', '.join(ALL_VERSIONS)}.",
        UNSUPPORTED_VERSION,
        rpc_id=rpc_id,
        data={"supported": list(ALL_VERSIONS), "requested": requested},
    )


def legacy_header_version(headers: dict[str, str]) -> str:
    """The 2025-line version a session's request speaks; 400 with -32022 for another."""
    version = headers.get("mcp-protocol-version") or DEFAULT_HEADER_VERSION
    if version not in LEGACY_VERSIONS:
        raise unsupported_version(version)
    return version


def _meta(payload: Any) -> dict | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("params"), dict):
        return None
    meta = payload["params"].get("_meta")
    return meta if isinstance(meta, dict) else None


def is_stateless(headers: dict[str, str], payload: Any) -> bool:
    """Whether a POST speaks the 2026 revision (or a later one QMCP answers with -32022).

    It does when its header names a version outside the 2025 line, or when it names none
    and the body carries the per-request ``_meta`` version. Everything else is the 2025
    line (an ``initialize``, or a request of a session).
    """
    header = (headers.get("mcp-protocol-version") or "").strip()
    if header in LEGACY_VERSIONS:
        return False
    if header:
        return header in STATELESS_VERSIONS or META_VERSION in (_meta(payload) or {})
    return META_VERSION in (_meta(payload) or {})


def check_stateless(headers: dict[str, str], raw: dict[str, Any]) -> dict[str, Any]:
    """The request's ``_meta`` after every 2026 header and _meta check; HttpFailure otherwise.

    In order: the version header is present (-32020), ``_meta`` names the version and the
    client capabilities (-32602), the header and ``_meta`` agree (-32020), the version is
    served (-32022), ``Mcp-Method`` and ``Mcp-Name`` mirror the body (-32020).
    """
    rpc_id = readable_id(raw)
    header = (headers.get("mcp-protocol-version") or "").strip()
    if not header:
        raise HttpFailure(
            400, "Missing MCP-Protocol-Version header.", HEADER_MISMATCH, rpc_id=rpc_id
        )
    params = raw.get("params")
    if params is not None and not isinstance(params, dict):
        raise HttpFailure(
            400, "Invalid params: params must be an object.", INVALID_PARAMS, rpc_id=rpc_id
        )
    meta = _meta(raw) or {}
    missing = [key for key in (META_VERSION, META_CAPABILITIES) if key not in meta]
    if missing:
        raise HttpFailure(
            400,
            f"Invalid params: _meta lacks {', '.join(missing)}.",
            INVALID_PARAMS,
            rpc_id=rpc_id,
        )
    if not isinstance(meta[META_CAPABILITIES], dict):
        raise HttpFailure(
            400,
            f"Invalid params: {META_CAPABILITIES} must be an object.",
            INVALID_PARAMS,
            rpc_id=rpc_id,
        )
    if meta[META_VERSION] != header:
        raise HttpFailure(
            400,
            "MCP-Protocol-Version header does not match _meta protocolVersion.",
            HEADER_MISMATCH,
            rpc_id=rpc_id,
        )
    if header not in STATELESS_VERSIONS:
        raise unsupported_version(header, rpc_id)
    check_routing_headers(headers, raw)
    return meta


def check_routing_headers(headers: dict[str, str], raw: dict[str, Any]) -> None:
    """``Mcp-Method`` must equal the body's method, ``Mcp-Name`` its named target (SEP-2243).

    Values are compared exactly (methods are case-sensitive) after trimming the optional
    whitespace HTTP allows around a field value.
    """
    rpc_id = readable_id(raw)
    method = raw.get("method")
    if method is None:
        return  # a response: nothing to route
    sent = headers.get("mcp-method")
    if sent is None or sent.strip() != method:
        raise HttpFailure(
            400,
            f"Mcp-Method header {sent.strip()!r} does not match the method {method!r}."
            if sent is not None
            else "Missing Mcp-Method header.",
            HEADER_MISMATCH,
            rpc_id=rpc_id,
        )
    field = NAMED_PARAMS.get(method)
    params = raw.get("params") or {}
    if field is None or not isinstance(params, dict) or not isinstance(params.get(field), str):
        return
    name = headers.get("mcp-name")
    if name is None or name.strip() != params[field]:
        raise HttpFailure(
            400,
            f"Mcp-Name header does not match params.{field}."
            if name is not None
            else f"Missing Mcp-Name header (params.{field} is {params[field]!r}).",
            HEADER_MISMATCH,
            rpc_id=rpc_id,
        )
    if method == "tools/call":
        check_param_headers(headers, params, rpc_id)


# A header value sent Base64-encoded (SEP-2243): the whole value is =?base64?<data>?=.
BASE64_VALUE = re.compile(r"=\?base64\?(.*)\?=", re.DOTALL)
# Tool name -> (its spec, {argument: header name}), so the schema is read once per tool.
_HEADER_PARAMS: dict[str, tuple[ToolSpec, dict[str, str]]] = {}


def header_params(name: str) -> dict[str, str]:
    """The arguments of tool ``name`` that its client mirrors in headers: ``{argument:
    header name}``, from the ``x-mcp-header`` of its input schema's properties."""
    spec = get_tool(name)
    if spec is None:
        return {}
    cached = _HEADER_PARAMS.get(name)
    if cached is None or cached[0] is not spec:
        properties = spec.input_schema().get("properties") or {}
        found = {
            argument: schema["x-mcp-header"]
            for argument, schema in properties.items()
            if isinstance(schema, dict) and isinstance(schema.get("x-mcp-header"), str)
        }
        cached = _HEADER_PARAMS[name] = (spec, found)
    return cached[1]


def _header_text(value: Any) -> str | None:
    """An argument as its header carries it (JSON's spelling for numbers and booleans);
    None for what no header carries (null, arrays, objects)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _decoded(raw: str) -> str | None:
    """A header value as sent: ``=?base64?...?=`` decoded (strictly: padding and alphabet),
    anything else as it is; None for a Base64 value that does not decode to UTF-8 text."""
    value = raw.strip()
    match = BASE64_VALUE.fullmatch(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def check_param_headers(headers: dict[str, str], params: Any, rpc_id) -> None:
    """Each ``Mcp-Param-<Name>`` a tools/call's tool declares must be sent exactly when its
    argument is, with the argument's value (SEP-2243); HttpFailure(400, -32020) otherwise."""
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return
    arguments = params.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for argument, header in header_params(params["name"]).items():
        expected = _header_text(arguments.get(argument))
        sent = headers.get(f"mcp-param-{header.lower()}")
        if sent is None and expected is None:
            continue
        if sent is None:
            problem = f"Missing Mcp-Param-{header} header (arguments.{argument} is set)."
        elif (value := _decoded(sent)) is None:
            problem = f"Mcp-Param-{header} header is not valid Base64."
        elif value != expected:
            problem = f"Mcp-Param-{header} header does not match arguments.{argument}."
        else:
            continue
        raise HttpFailure(400, problem, HEADER_MISMATCH, rpc_id=rpc_id)


def method_not_found(method: str, rpc_id) -> HttpFailure:
    return HttpFailure(404, f"Method not found: {method}", METHOD_NOT_FOUND, rpc_id=rpc_id)


# --- The caller and the session ------------------------------------------------------------


def _bearer(headers: dict[str, str]) -> str:
    return bearer_secret(headers.get("authorization", ""))


def authenticate(headers: dict[str, str]) -> Principal:
    """The caller, from ``Authorization: Bearer`` (an API token, or an OAuth access token
    bound to this MCP endpoint); HttpFailure(401) otherwise, whose challenge names the
    protected-resource metadata (RFC 9728) so an OAuth client can find where to sign in."""
    authorization = headers.get("authorization", "")
    secret = _bearer(headers)
    if secret:
        try:
            return token_authenticate(secret=secret, resource=mcp_resource(headers.get("host", "")))
        except ApplicationError as exc:
            raise _unauthorized(exc.message, headers) from exc
    anonymous = settings.QMCP_MCP_ANONYMOUS_USER
    if anonymous and not authorization:
        user = User.objects.filter(email__iexact=anonymous, is_active=True).first()
        if user is not None:
            scopes = frozenset({ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL})
            return Principal(user=user, scopes=scopes)
    raise _unauthorized(
        "Authentication required: send 'Authorization: Bearer <token>'.", headers, token_sent=False
    )


def _challenge(headers: dict[str, str], **params: str) -> str:
    params["resource_metadata"] = mcp_resource_metadata_url(headers.get("host", ""))
    return 'Bearer realm="qmcp", ' + ", ".join(f'{k}="{v}"' for k, v in params.items())


def _unauthorized(message: str, headers: dict[str, str], token_sent: bool = True) -> HttpFailure:
    # RFC 6750 section 3.1: a request without any token gets no error code.
    challenge = _challenge(headers, **({"error": "invalid_token"} if token_sent else {}))
    return HttpFailure(401, message, headers={"WWW-Authenticate": challenge})


# The scope each method needs. An OAuth token without it is refused with 403 before the
# method runs, so its client learns which scope to ask the user for (MCP's scope challenge);
# an API token cannot ask for more, and keeps getting a tool error and a refused audit row.
METHOD_SCOPES = {"tools/call": ApiToken.Scope.TOOLS_CALL, "tools/list": ApiToken.Scope.TOOLS_READ}


def check_method_scope(principal: Principal, method: str, headers: dict[str, str], rpc_id=None):
    """HttpFailure(403, ``insufficient_scope`` naming the scope) when ``principal`` came with
    an OAuth token that lacks the scope ``method`` needs."""
    scope = METHOD_SCOPES.get(method)
    if principal.oauth_token is None or scope is None or principal.has_scope(scope):
        return
    challenge = _challenge(headers, error="insufficient_scope", scope=scope)
    raise HttpFailure(
        403,
        f"This token lacks the '{scope}' scope.",
        headers={"WWW-Authenticate": challenge},
        rpc_id=rpc_id,
        data={"scope": scope},
    )


def session_and_principal(headers: dict[str, str]) -> tuple[McpSession, Principal]:
    """The request's session and caller: 401 for a bad token, 400/404 for a bad session."""
    fast = session_authenticate(
        session_id=headers.get("mcp-session-id", ""), secret=_bearer(headers)
    )
    if fast is not None:
        return fast
    principal = authenticate(headers)
    session_id = headers.get("mcp-session-id", "")
    if not session_id:
        raise HttpFailure(400, "Bad Request: Mcp-Session-Id header is required.")
    try:
        return session_get(session_id=session_id, principal=principal), principal
    except SessionNotFound as exc:
        raise HttpFailure(404, "Session not found.") from exc
