"""prompts/list, prompts/get (with multi round-trip questions in 2026) and completion/complete."""

from mcp_transport import features
from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError
from mcp_transport.methods.exchange import Exchange, require
from mcp_transport.methods.input_required import request_inputs, request_state
from qmcp_site.errors import ApplicationError


def handle_prompts_list(ex: Exchange, params: dict) -> dict:
    return {"prompts": [p.describe() for p in features.PROMPTS.values()]}


def handle_prompts_get(ex: Exchange, params: dict) -> dict:
    name = require(params, "name", str)
    arguments = require(params, "arguments", dict, optional=True) or {}
    if not all(isinstance(v, str) for v in arguments.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: prompt arguments must be strings.")
    # A 2026 request may carry answers to the prompt's questions (multi round-trip).
    answers = request_inputs(name=f"prompt:{name}", params=params) if ex.session is None else None
    try:
        return features.prompt_get(
            principal=ex.principal, name=name, arguments=arguments, answers=answers
        )
    except features.PromptInputRequired as needed:
        return {
            "resultType": "input_required",
            "inputRequests": needed.requests,
            "requestState": request_state(name=f"prompt:{name}", responses=answers),
        }
    except ApplicationError as exc:
        raise RpcError(INVALID_PARAMS, exc.message) from exc


def handle_completion_complete(ex: Exchange, params: dict) -> dict:
    ref = require(params, "ref", dict)
    argument = require(params, "argument", dict)
    name, value = argument.get("name"), argument.get("value", "")
    if not isinstance(name, str) or not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "Invalid params: argument needs a name and a value.")
    values = features.complete(principal=ex.principal, ref=ref, argument=name, value=value)
    return {"completion": {"values": values, "total": len(values), "hasMore": False}}
