"""Multi round-trip requests (SEP-2322, 2026-07-28): the client's answers to a call's or a
prompt's questions, the signed ``requestState`` that carries them between rounds, and
:class:`InputRounds`, which asks a tool's questions that way (in a call, or in a task)."""

from typing import Any

from django.core import signing

from mcp_transport.http import MISSING_CLIENT_CAPABILITY
from mcp_transport.jsonrpc import INVALID_PARAMS, RpcError, rpc_error, rpc_result
from tools.registry import InputRequired

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


class MissingClientCapability(Exception):
    """A 2026 call needs input of a kind the client did not declare it can give."""

    def __init__(self, capabilities: list[str]):
        super().__init__(", ".join(capabilities))
        self.capabilities = capabilities


# JSON-RPC errors a 2026 call answers with HTTP 400 when nothing was streamed before them.
HTTP_400_CODES = (MISSING_CLIENT_CAPABILITY,)
# The client capability each kind of input request needs.
INPUT_CAPABILITIES = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}


class InputRounds:
    """A 2026-07-28 tool's questions to its client, as multi round-trip requests.

    An ``ask`` whose keys all have answers (this round's ``inputResponses`` or earlier
    rounds' in the signed ``requestState``) returns them; otherwise the call ends with an
    ``InputRequiredResult`` naming what is still missing, and the tool runs again from the
    start when the client calls back with the answers. Requests the client declared no
    capability for are never sent; a call that needs only those fails with -32021.
    """

    def __init__(self, inputs: dict[str, Any] | None, client_capabilities: dict[str, Any]):
        self.inputs = inputs or {}
        self.client_capabilities = client_capabilities
        self.used: dict[str, Any] = {}
        self.count = 0

    async def ask(self, requests: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        declared = self.client_capabilities
        undeclared = {
            key
            for key, (method, _) in requests.items()
            if INPUT_CAPABILITIES.get(method) not in declared
        }
        unanswered = [key for key in requests if key not in self.inputs]
        if unanswered and undeclared == set(requests):
            raise MissingClientCapability(
                sorted({INPUT_CAPABILITIES.get(m, m) for m, _ in requests.values()})
            )
        missing = {
            key: {"method": requests[key][0], "params": requests[key][1]}
            for key in unanswered
            if key not in undeclared
        }
        if missing:
            raise InputRequired(missing)
        # What the client cannot answer is None: the tool goes on without it.
        answers = {key: self.inputs.get(key) for key in requests}
        self.used.update({k: v for k, v in answers.items() if v is not None})
        return answers

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One question, keyed by its place among the tool's questions."""
        self.count += 1
        key = f"request-{self.count}"
        return (await self.ask({key: (method, params)}))[key]

    def reply(self, needed: Exception, *, rpc_id: Any, name: str) -> dict[str, Any]:
        """The answer to a call of tool ``name`` that ``needed`` ended: -32021 naming the
        capabilities it lacks, or the InputRequiredResult with what is still to answer."""
        if isinstance(needed, MissingClientCapability):
            return rpc_error(rpc_id, MISSING_CLIENT_CAPABILITY, *missing_capability(needed))
        result = {
            "resultType": "input_required",
            "inputRequests": needed.requests,
            "requestState": request_state(name=name, responses=self.used),
        }
        return rpc_result(rpc_id, result)


def missing_capability(needed: MissingClientCapability) -> tuple[str, dict[str, Any]]:
    """The message and data of the -32021 error for ``needed``."""
    return (
        f"This call needs the client capabilities: {needed}.",
        {"requiredCapabilities": {name: {} for name in needed.capabilities}},
    )
