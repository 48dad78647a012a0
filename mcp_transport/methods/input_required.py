"""Multi round-trip requests (SEP-2322, 2026-07-28): the client's answers to a call's or a
prompt's questions, and the signed ``requestState`` that carries them between rounds."""

from typing import Any

from django.core import signing

from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError

REQUEST_STATE_SALT = "qmcp.mcp.request-state"
REQUEST_STATE_MAX_AGE = 3600


def request_inputs(*, name: str, params: dict) -> dict[str, Any]:
    """The client's answers to a call's questions: this round's ``inputResponses`` over the
    earlier rounds' kept in ``requestState``. -32602 for a malformed answer or a state
    that is not one QMCP signed for this tool."""
    responses = params.get("inputResponses")
    if responses is None:
        responses = {}
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: inputResponses must map keys to objects.")
    state = params.get("requestState")
    earlier: dict[str, Any] = {}
    if state is not None:
        if not isinstance(state, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: requestState must be a string.")
        try:
            data = signing.loads(state, salt=REQUEST_STATE_SALT, max_age=REQUEST_STATE_MAX_AGE)
        except signing.BadSignature as exc:  # tampered, forged or expired
            raise RpcError(
                INVALID_PARAMS, "Invalid params: requestState failed its integrity check."
            ) from exc
        if not isinstance(data, dict) or data.get("tool") != name:
            raise RpcError(INVALID_PARAMS, "Invalid params: requestState is for another call.")
        earlier = data.get("responses") or {}
    return {**earlier, **responses}


def request_state(*, name: str, responses: dict[str, Any]) -> str:
    """The signed requestState that carries ``responses`` into the next round."""
    return signing.dumps(
        {"tool": name, "responses": responses}, salt=REQUEST_STATE_SALT, compress=True
    )
