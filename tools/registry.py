"""The tool registry: ``@tool`` registers a function with pydantic input and output models.

A tool function takes ``(args, ctx)``: ``args`` is an instance of its input model, already
validated, and ``ctx`` a :class:`ToolContext`. It returns an instance of its output model,
a string, or a :class:`ToolResult`, and raises ``ApplicationError`` to report a failure the
caller should read.
"""

import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from qmcp_site.errors import ApplicationError

logger = logging.getLogger(__name__)

ANNOTATION_KEYS = {"title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
RISK_LEVELS = ("low", "medium", "high", "critical")
# How a tool runs as a task (ToolSpec.task_support), as MCP's execution.taskSupport says it.
TASK_SUPPORT = ("forbidden", "optional", "required")


@dataclass
class Preview:
    """What a gated call would do, for the reviewer: a read-only look at its target.

    ``summary`` is one sentence; ``facts`` are label/value pairs about the target and
    ``changes`` a field-by-field before/after list, both compared when the request is opened
    again to flag a target that changed; ``stats`` are figures that move on their own (how
    many calls touched the target), shown but not compared; ``refusal``, when set, says why
    the call cannot succeed, and the call is refused at once instead of waking a reviewer.
    """

    summary: str
    facts: dict[str, Any] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    refusal: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "facts": self.facts,
            "changes": self.changes,
            "stats": self.stats,
            "refusal": self.refusal,
        }


def preview_changed(stored: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether the target a stored preview described is no longer as it was."""
    if not stored or not current:
        return False
    keys = ("facts", "changes", "refusal")
    return any(stored.get(k) != current.get(k) for k in keys)


@dataclass
class ToolResult:
    """What a tool produced, in MCP's CallToolResult shape."""

    content: list[dict[str, Any]]
    structured: dict[str, Any] | None = None
    is_error: bool = False
    # The audit log's error record for a failed run: {"code", "message", "details"?}.
    error: dict[str, Any] | None = None

    @classmethod
    def text(cls, text: str, structured: dict[str, Any] | None = None) -> "ToolResult":
        return cls(content=[{"type": "text", "text": text}], structured=structured)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"content": self.content, "isError": self.is_error}
        if self.structured is not None:
            result["structuredContent"] = self.structured
        return result


def _progress_params(progress: float, total: float | None, message: str | None) -> dict:
    params: dict[str, Any] = {"progress": progress}
    if total is not None:
        params["total"] = total
    if message is not None:
        params["message"] = message
    return params


def _log_params(level: str, data: Any, logger: str | None) -> dict:
    params: dict[str, Any] = {"level": level, "data": data}
    if logger:
        params["logger"] = logger
    return params


class ToolContext:
    """What a running tool may use besides its arguments.

    Interfaces that can stream (MCP) pass ``notify``, which receives progress and log
    notifications as ``(method, params)``; elsewhere they are only logged.
    """

    def __init__(self, *, principal=None, invocation=None, notify: Callable | None = None):
        self.principal = principal
        self.invocation = invocation
        self._notify = notify

    def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ):
        self._emit("notifications/progress", _progress_params(progress, total, message))

    def log(self, level: str, data: Any, logger: str | None = None):
        self._emit("notifications/message", _log_params(level, data, logger))

    def _emit(self, method: str, params: dict[str, Any]):
        if self._notify is not None:
            self._notify(method, params)


class InputRequired(Exception):
    """Raised by an interface's ``ask`` when the client must answer ``requests`` first
    (``{key: {"method", "params"}}``); the interface answers the call with them."""

    def __init__(self, requests: dict[str, dict[str, Any]]):
        super().__init__(", ".join(requests))
        self.requests = requests


class TaskRequested(Exception):
    """Raised by an interface's ``as_task`` when the call goes on as a task: the interface
    answers the call with the task, and runs the tool again from the start as that task."""


class AsyncToolContext:
    """The context of an ``async def`` tool: it can also ask the client something.

    ``notify(method, params)`` and ``request(method, params) -> result`` are coroutines
    given by the interface; MCP streams both to the client. Without them, notifications
    are dropped and requests fail with a clear error.
    """

    def __init__(
        self,
        *,
        principal=None,
        invocation=None,
        notify: Callable[[str, dict], Awaitable[None]] | None = None,
        request: Callable[[str, dict], Awaitable[dict]] | None = None,
        close_stream: Callable[[], Awaitable[None]] | None = None,
        ask: Callable[[dict], Awaitable[dict]] | None = None,
        wait: Callable[..., Awaitable[Any]] | None = None,
        as_task: Callable[[], Awaitable[None]] | None = None,
    ):
        self.principal = principal
        self.invocation = invocation
        # True on a stream that may stay open (MCP): a tool may then wait for people.
        self.can_wait = request is not None
        self._notify = notify
        self._request = request
        self._close_stream = close_stream
        self._ask = ask
        self._wait = wait
        self._as_task = as_task

    async def wait(self, **how) -> Any:
        """Waits, holding no thread, with the interface's one wait helper (for MCP,
        ``mcp_transport.streams.wait_for``: ``groups``, ``check``, ``recheck``,
        ``limit_seconds``, ``on_wait``); only where ``can_wait``."""
        if self._wait is None:
            raise ApplicationError(
                "Only a caller that keeps its stream open can wait.", "bad_request"
            )
        return await self._wait(**how)

    async def ask(self, requests: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Asks the client for several inputs at once: ``{key: (method, params)}`` in,
        ``{key: result}`` out.

        Over MCP 2025 each is a request to the client, in turn. Over MCP 2026-07-28 the
        interface may raise :class:`InputRequired` instead: the call then ends with the
        requests for the client to answer, and is made again with the answers (the tool runs
        again from the start, so everything before its questions must be safe to repeat).
        """
        if self._ask is not None:
            return await self._ask(requests)
        return {
            key: await self.request(method, params) for key, (method, params) in requests.items()
        }

    async def as_task(self) -> None:
        """Marks where a tool that declares ``task_support`` stops being quick: from here on
        the call may go on as a task (MCP 2026-07-28, a client of the tasks extension).

        The interface may raise :class:`TaskRequested`: the caller then gets the task, and
        the tool runs again from the start as that task, where ``as_task`` returns at once
        (so, as with ``ask``, what comes before must be safe to repeat). Everywhere else it
        returns at once and the call goes on as it is.
        """
        if self._as_task is not None:
            await self._as_task()

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ):
        await self._emit("notifications/progress", _progress_params(progress, total, message))

    async def log(self, level: str, data: Any, logger: str | None = None):
        await self._emit("notifications/message", _log_params(level, data, logger))

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Sends a request to the client (sampling, elicitation) and returns its result."""
        if self._request is None:
            raise ApplicationError(
                f"This tool needs a client that answers '{method}', which only MCP provides.",
                "bad_request",
            )
        return await self._request(method, params)

    async def close_stream(self):
        """Ends the client's HTTP stream while the call goes on; the client resumes later."""
        if self._close_stream is not None:
            await self._close_stream()

    async def _emit(self, method: str, params: dict[str, Any]):
        if self._notify is not None:
            await self._notify(method, params)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    func: Callable[[Any, ToolContext], Any]
    input_model: type[pydantic.BaseModel]
    output_model: type[pydantic.BaseModel] | None = None
    title: str | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    requires_approval: bool = False
    # A JSON schema used as inputSchema as it is, for tools whose schema pydantic cannot say.
    raw_input_schema: dict[str, Any] | None = None
    # The tool declares (for the server) whether it writes anything: a tool that does runs
    # in a transaction with its audit row; one that does not (writes=False) runs without
    # one, and its audit row may be written later, grouped with others'. MCP's readOnlyHint
    # is derived from it, never the reverse: a client's hint decides nothing here.
    writes: bool = True
    # The tool declares (for the server, unlike the client's idempotentHint) that running it
    # again after a run that died part way is harmless: an approved call whose worker was
    # lost then runs once more instead of failing.
    retry_safe: bool = False
    # ``preview(args) -> Preview``: read-only, shown to reviewers of a gated call.
    preview: Callable[[Any], Preview] | None = None
    # The default risk level of the tool's policy (one of RISK_LEVELS).
    risk: str = "medium"
    # Whether a call may run as a task (MCP 2026-07-28 tasks extension), one of TASK_SUPPORT:
    # "optional" or "required" for an ``async def`` tool that calls ``ctx.as_task()``.
    task_support: str = "forbidden"

    @functools.cached_property
    def is_async(self) -> bool:
        """``async def`` tools run on the event loop and get an AsyncToolContext (asked on
        every call, so answered once)."""
        return inspect.iscoroutinefunction(self.func)

    def input_schema(self) -> dict[str, Any]:
        if self.raw_input_schema is not None:
            return self.raw_input_schema
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any] | None:
        return self.output_model.model_json_schema() if self.output_model else None

    def parse_arguments(self, arguments: Any) -> pydantic.BaseModel:
        """The validated input model; ``invalid_arguments`` with pydantic's errors otherwise."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ApplicationError(
                "Tool arguments must be a JSON object.",
                "invalid_arguments",
                {"received_type": type(arguments).__name__},
            )
        try:
            return self.input_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            errors = [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            summary = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in errors
            )
            raise ApplicationError(
                f"Invalid arguments for tool '{self.name}': {summary}",
                "invalid_arguments",
                {"errors": errors},
            ) from exc

    def make_preview(self, args: pydantic.BaseModel) -> Preview | None:
        """The tool's preview of validated ``args``; None without one. A preview that fails
        says so instead of blocking the call: reviewers then decide without it."""
        if self.preview is None:
            return None
        try:
            return self.preview(args)
        except Exception:
            logger.warning("the preview of tool %s failed", self.name, exc_info=True)
            return Preview(summary="The preview could not be computed.")

    def to_result(self, value: Any) -> ToolResult:
        """Normalises what the tool function returned into a ToolResult."""
        if isinstance(value, ToolResult):
            return value
        if isinstance(value, pydantic.BaseModel):
            data = value.model_dump(mode="json")
            return ToolResult.text(json.dumps(data, ensure_ascii=False), structured=data)
        if isinstance(value, str):
            return ToolResult.text(value)
        raise TypeError(f"Tool {self.name!r} returned {type(value).__name__}")


_REGISTRY: dict[str, ToolSpec] = {}


def tool(
    *,
    name: str,
    description: str,
    input: type[pydantic.BaseModel],
    output: type[pydantic.BaseModel] | None = None,
    title: str | None = None,
    annotations: dict[str, Any] | None = None,
    requires_approval: bool = False,
    raw_input_schema: dict[str, Any] | None = None,
    writes: bool = True,
    retry_safe: bool = False,
    preview: Callable[[Any], Preview] | None = None,
    risk: str = "medium",
    task_support: str = "forbidden",
):
    """Registers the decorated function as a tool; names are unique.

    ``writes=False`` declares that the tool writes nothing (see ToolSpec.writes); its
    ``readOnlyHint`` annotation is then set for clients, and giving ``readOnlyHint`` without
    ``writes=False`` is an error: the declaration, not the hint, decides how the tool runs.

    ``retry_safe=True`` says a run cut short may be run again (see ToolSpec.retry_safe):
    true of tools whose only effects are QMCP's own database writes, which commit with the
    audit row or not at all.
    """
    if risk not in RISK_LEVELS:
        raise ValueError(f"Unknown risk level {risk!r}; one of {RISK_LEVELS}.")
    if task_support not in TASK_SUPPORT:
        raise ValueError(f"Unknown task support {task_support!r}; one of {TASK_SUPPORT}.")
    annotations = dict(annotations or {})
    unknown = set(annotations) - ANNOTATION_KEYS
    if unknown:
        raise ValueError(f"Unknown tool annotations: {sorted(unknown)}")
    if annotations.get("readOnlyHint", not writes) is writes:
        raise ValueError(f"Tool {name!r}: readOnlyHint follows writes=...; declare writes instead.")
    if not writes:
        annotations["readOnlyHint"] = True

    def decorator(func):
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ValueError(f"A tool named {name!r} is already registered.")
        if task_support != "forbidden" and not inspect.iscoroutinefunction(func):
            raise ValueError(f"Tool {name!r}: only an async def tool can run as a task.")
        _REGISTRY[name] = ToolSpec(
            name=name,
            description=description,
            func=func,
            input_model=input,
            output_model=output,
            title=title,
            annotations=annotations,
            requires_approval=requires_approval,
            raw_input_schema=raw_input_schema,
            writes=writes,
            retry_safe=retry_safe,
            preview=preview,
            risk=risk,
            task_support=task_support,
        )
        return func

    return decorator


def get_tool(name: str) -> ToolSpec | None:
    return _REGISTRY.get(name)


def all_tools() -> list[ToolSpec]:
    return sorted(_REGISTRY.values(), key=lambda spec: spec.name)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
