"""Clients for QMCP's /v1 REST API: :class:`QMCPClient` (sync) and :class:`AsyncQMCPClient`.

Both cover every /v1 operation (see :data:`OPERATIONS`), return pydantic models, send the
token as ``Authorization: Bearer``, retry with exponential backoff, and raise a
:class:`~qmcp_client.errors.QMCPError` subclass carrying the server's error.

Retries: a connection that could not be made, and 502/503/504, are retried for every
method; other transport errors and 500 only for GET (a POST that may have reached the
server is not repeated: it could run a tool twice).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx

from qmcp_client.errors import (
    QMCPConnectionError,
    ServerError,
    WaitTimeout,
    error_for,
)
from qmcp_client.models import Health, HumanRequest, Invocation, Page, PolicyExplanation, Tool

__all__ = ["OPERATIONS", "AsyncQMCPClient", "QMCPClient"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
USER_AGENT = "qmcp-client/0.1"

# Every REST operation of the server and the client method that performs it. The test
# suite checks that this table covers /v1/openapi.json exactly.
OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/health"): "health",
    ("GET", "/v1/tools"): "list_tools",
    ("POST", "/v1/tools/{name}"): "call_tool",
    ("GET", "/v1/invocations"): "list_invocations",
    ("GET", "/v1/invocations/{invocation_id}"): "get_invocation",
    ("POST", "/v1/human/requests"): "create_human_request",
    ("GET", "/v1/human/requests"): "list_human_requests",
    ("GET", "/v1/human/requests/{request_id}"): "get_human_request",
    ("POST", "/v1/human/responses"): "respond",
    ("POST", "/v1/human/requests/{request_id}/delegate"): "delegate",
    ("POST", "/v1/policy/explain"): "explain_policy",
}

_ALWAYS_RETRY_STATUS = {502, 503, 504}


@dataclass
class _Op:
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    send_json: bool = False


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _page(model: type, page: int, page_size: int | None) -> Callable[[Any], Page]:
    def parse(data: Any) -> Page:
        return Page[model].model_validate({**data, "page": page, "page_size": page_size})

    return parse


def _merge(arguments: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**(arguments or {}), **kwargs}


class _Poll:
    """The bookkeeping of a polling wait: reports each poll, and times it out."""

    def __init__(self, timeout: float, interval: float, on_poll: Callable[[Any], None] | None):
        self.deadline = time.monotonic() + timeout
        self.interval = interval
        self.on_poll = on_poll

    def next(self, seen: Any, timeout_error: WaitTimeout) -> float:
        """Seconds to sleep before the next poll; raises ``timeout_error`` past the deadline."""
        if self.on_poll is not None:
            self.on_poll(seen)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise timeout_error
        return min(self.interval, remaining)


def _no_decision(request_id, timeout: float) -> WaitTimeout:
    return WaitTimeout(
        f"No decision on human request {request_id} within {timeout} s.",
        code="timeout",
        details={"request_id": str(request_id)},
    )


def _not_final(invocation: Invocation, timeout: float) -> WaitTimeout:
    return WaitTimeout(
        f"Invocation {invocation.id} is still {invocation.status} after {timeout} s.",
        code="timeout",
        details={"invocation_id": str(invocation.id), "status": invocation.status},
    )


class _Base:
    """What the sync and async clients share: configuration and the operations' shapes."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        headers: dict[str, str] | None = None,
    ):
        self.url = (url or os.environ.get("QMCP_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("QMCP_TOKEN")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"

    # -- retry policy -------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)

    @staticmethod
    def _retry_status(method: str, status: int) -> bool:
        return status in _ALWAYS_RETRY_STATUS or (status >= 500 and method == "GET")

    @staticmethod
    def _retry_exception(method: str, exc: httpx.TransportError) -> bool:
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) or method == "GET"

    @staticmethod
    def _result(op: _Op, response: httpx.Response) -> Any:
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise error_for(response.status_code, body, response.text)
        if body is None:
            raise ServerError(
                f"Expected JSON from {op.method} {op.path}, got {response.text[:200]!r}",
                status=response.status_code,
                code="bad_response",
            )
        return op.parse(body)

    # -- the operations -----------------------------------------------------------------

    def _op_health(self) -> _Op:
        return _Op("GET", "/health", Health.model_validate)

    def _op_list_tools(self) -> _Op:
        return _Op("GET", "/v1/tools", lambda data: [Tool.model_validate(t) for t in data])

    def _op_call_tool(self, name: str, arguments: dict[str, Any]) -> _Op:
        return _Op(
            "POST",
            f"/v1/tools/{name}",
            Invocation.model_validate,
            json=arguments,
            send_json=True,
        )

    def _op_list_invocations(self, tool, status, principal, page, page_size) -> _Op:
        params = _clean(
            {
                "tool": tool,
                "status": status,
                "principal": principal,
                "page": page,
                "page_size": page_size,
            }
        )
        return _Op("GET", "/v1/invocations", _page(Invocation, page, page_size), params=params)

    def _op_get_invocation(self, invocation_id: str | UUID) -> _Op:
        return _Op("GET", f"/v1/invocations/{invocation_id}", Invocation.model_validate)

    def _op_create_human_request(
        self, title, prompt, kind, context, options, timeout_seconds, approvals_required
    ) -> _Op:
        body = {
            "kind": kind,
            "title": title,
            "prompt": prompt,
            "context": context or {},
            "options": options,
            "timeout_seconds": timeout_seconds,
            "approvals_required": approvals_required,
        }
        return _Op(
            "POST", "/v1/human/requests", HumanRequest.model_validate, json=body, send_json=True
        )

    def _op_list_human_requests(self, status, page, page_size) -> _Op:
        params = _clean({"status": status, "page": page, "page_size": page_size})
        return _Op("GET", "/v1/human/requests", _page(HumanRequest, page, page_size), params=params)

    def _op_get_human_request(self, request_id: str | UUID) -> _Op:
        return _Op("GET", f"/v1/human/requests/{request_id}", HumanRequest.model_validate)

    def _op_respond(
        self, request_id, decision, option, answer, comment, grant_hours, grant_arguments
    ) -> _Op:
        body = {
            "request_id": str(request_id),
            "decision": decision,
            "option": option,
            "answer": answer,
            "comment": comment,
        }
        if grant_hours is not None:
            body.update(grant_hours=grant_hours, grant_arguments=grant_arguments)
        return _Op(
            "POST", "/v1/human/responses", HumanRequest.model_validate, json=body, send_json=True
        )

    def _op_delegate(self, request_id, to, comment) -> _Op:
        return _Op(
            "POST",
            f"/v1/human/requests/{request_id}/delegate",
            HumanRequest.model_validate,
            json={"to": to, "comment": comment},
            send_json=True,
        )

    def _op_explain_policy(self, tool, arguments, user, client) -> _Op:
        body = {"tool": tool, "arguments": arguments or {}, "caller": _clean({"user": user})}
        if client:
            body["caller"]["client"] = client
        return _Op(
            "POST",
            "/v1/policy/explain",
            PolicyExplanation.model_validate,
            json=body,
            send_json=True,
        )


class QMCPClient(_Base):
    """The synchronous client. Use as a context manager, or call :meth:`close`.

    >>> with QMCPClient("http://127.0.0.1:8000", token) as qmcp:
    ...     qmcp.call_tool("echo", message="hi").text
    """

    def __init__(self, url=None, token=None, *, http_client: httpx.Client | None = None, **kw):
        super().__init__(url, token, **kw)
        self._owns_http = http_client is None
        self.http = http_client or httpx.Client(timeout=self.timeout)

    def __enter__(self) -> QMCPClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def _send(self, op: _Op) -> Any:
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    op.method,
                    self.url + op.path,
                    params=op.params or None,
                    json=op.json if op.send_json else None,
                    headers=self.headers,
                    timeout=self.timeout,
                )
            except httpx.TransportError as exc:
                if attempt < self.retries and self._retry_exception(op.method, exc):
                    time.sleep(self._delay(attempt))
                    attempt += 1
                    continue
                raise QMCPConnectionError(
                    f"{op.method} {self.url}{op.path} failed: {exc!r}", code="connection_error"
                ) from exc
            if attempt < self.retries and self._retry_status(op.method, response.status_code):
                time.sleep(self._delay(attempt))
                attempt += 1
                continue
            return self._result(op, response)

    # -- operations ---------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``: ``status == "ok"`` when the server and its database answer."""
        return self._send(self._op_health())

    def list_tools(self) -> list[Tool]:
        return self._send(self._op_list_tools())

    def call_tool(
        self, name: str, arguments: dict[str, Any] | None = None, /, **kwargs
    ) -> Invocation:
        """Calls a tool: ``call_tool("echo", message="hi")`` or ``call_tool("echo", {...})``.

        Returns the invocation: ``status == "succeeded"`` when it ran, ``"awaiting_approval"``
        (HTTP 202, with ``human_request_id``) when a reviewer must decide first.
        """
        return self._send(self._op_call_tool(name, _merge(arguments, kwargs)))

    invoke = call_tool

    def list_invocations(
        self,
        *,
        tool: str | None = None,
        status: str | None = None,
        principal: int | None = None,
        page: int = 1,
        page_size: int | None = None,
    ) -> Page[Invocation]:
        return self._send(self._op_list_invocations(tool, status, principal, page, page_size))

    def get_invocation(self, invocation_id: str | UUID) -> Invocation:
        return self._send(self._op_get_invocation(invocation_id))

    def create_human_request(
        self,
        title: str,
        prompt: str = "",
        *,
        kind: str = "question",
        context: dict[str, Any] | None = None,
        options: list[str] | None = None,
        timeout_seconds: int = 3600,
        approvals_required: int = 1,
    ) -> HumanRequest:
        return self._send(
            self._op_create_human_request(
                title, prompt, kind, context, options, timeout_seconds, approvals_required
            )
        )

    def list_human_requests(
        self, *, status: str | None = None, page: int = 1, page_size: int | None = None
    ) -> Page[HumanRequest]:
        return self._send(self._op_list_human_requests(status, page, page_size))

    def get_human_request(self, request_id: str | UUID) -> HumanRequest:
        return self._send(self._op_get_human_request(request_id))

    def respond(
        self,
        request_id: str | UUID,
        decision: str,
        *,
        option: str = "",
        answer: str = "",
        comment: str = "",
        grant_hours: int | None = None,
        grant_arguments: str = "exact",
    ) -> HumanRequest:
        """Approves, rejects or answers a request (``decision``: approve, reject, answer).
        With an approval, ``grant_hours`` (1 to 720) also lets the call's caller run the
        tool that long without asking, with the ``"exact"`` arguments or ``"any"``."""
        return self._send(
            self._op_respond(
                request_id, decision, option, answer, comment, grant_hours, grant_arguments
            )
        )

    def delegate(self, request_id: str | UUID, to: str, *, comment: str = "") -> HumanRequest:
        """Hands a request you may decide to the colleague with the email ``to``."""
        return self._send(self._op_delegate(request_id, to, comment))

    def explain_policy(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        user: str | None = None,
        client: str = "",
    ) -> PolicyExplanation:
        """Which approval rule a call would match now, and what it would need; nothing runs.
        ``user`` (an email) explains another caller's call (staff only), ``client`` sets
        the MCP client name the rules see."""
        return self._send(self._op_explain_policy(tool, arguments, user, client))

    def approve(self, request_id: str | UUID, comment: str = "") -> HumanRequest:
        return self.respond(request_id, "approve", comment=comment)

    def reject(self, request_id: str | UUID, comment: str = "") -> HumanRequest:
        return self.respond(request_id, "reject", comment=comment)

    # -- waiting ------------------------------------------------------------------------

    def wait_for_response(
        self,
        request_id: str | UUID,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[HumanRequest], None] | None = None,
    ) -> HumanRequest:
        """Polls a human request until it is no longer pending; :class:`WaitTimeout` if not."""
        poll = _Poll(timeout, poll_interval, on_poll)
        while True:
            request = self.get_human_request(request_id)
            if not request.is_pending:
                return request
            time.sleep(poll.next(request, _no_decision(request_id, timeout)))

    def wait_for_invocation(
        self,
        invocation_id: str | UUID,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[Invocation], None] | None = None,
    ) -> Invocation:
        """Polls an invocation until its status is final; :class:`WaitTimeout` if not."""
        poll = _Poll(timeout, poll_interval, on_poll)
        while True:
            invocation = self.get_invocation(invocation_id)
            if invocation.is_final:
                return invocation
            time.sleep(poll.next(invocation, _not_final(invocation, timeout)))

    def invoke_and_wait(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        /,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[Any], None] | None = None,
        **kwargs,
    ) -> Invocation:
        """Calls a tool and, if it waits for approval, follows it to its final invocation.

        Returns the final :class:`Invocation` (``succeeded``, ``failed``, ``rejected``,
        ``expired``...); raises :class:`WaitTimeout` when nothing is decided in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        invocation = self.call_tool(name, _merge(arguments, kwargs))
        if invocation.is_final:
            return invocation
        if invocation.human_request_id is not None and invocation.awaiting_approval:
            self.wait_for_response(
                invocation.human_request_id,
                timeout=max(0.0, deadline - time.monotonic()),
                poll_interval=poll_interval,
                on_poll=on_poll,
            )
        return self.wait_for_invocation(
            invocation.id,
            timeout=max(0.0, deadline - time.monotonic()),
            poll_interval=min(poll_interval, 0.25),
            on_poll=on_poll,
        )


class AsyncQMCPClient(_Base):
    """The asyncio client; same methods as :class:`QMCPClient`, as coroutines."""

    def __init__(self, url=None, token=None, *, http_client: httpx.AsyncClient | None = None, **kw):
        super().__init__(url, token, **kw)
        self._owns_http = http_client is None
        self.http = http_client or httpx.AsyncClient(timeout=self.timeout)

    async def __aenter__(self) -> AsyncQMCPClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    close = aclose

    async def _send(self, op: _Op) -> Any:
        attempt = 0
        while True:
            try:
                response = await self.http.request(
                    op.method,
                    self.url + op.path,
                    params=op.params or None,
                    json=op.json if op.send_json else None,
                    headers=self.headers,
                    timeout=self.timeout,
                )
            except httpx.TransportError as exc:
                if attempt < self.retries and self._retry_exception(op.method, exc):
                    await asyncio.sleep(self._delay(attempt))
                    attempt += 1
                    continue
                raise QMCPConnectionError(
                    f"{op.method} {self.url}{op.path} failed: {exc!r}", code="connection_error"
                ) from exc
            if attempt < self.retries and self._retry_status(op.method, response.status_code):
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
                continue
            return self._result(op, response)

    async def health(self) -> Health:
        return await self._send(self._op_health())

    async def list_tools(self) -> list[Tool]:
        return await self._send(self._op_list_tools())

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None = None, /, **kwargs
    ) -> Invocation:
        return await self._send(self._op_call_tool(name, _merge(arguments, kwargs)))

    invoke = call_tool

    async def list_invocations(
        self,
        *,
        tool: str | None = None,
        status: str | None = None,
        principal: int | None = None,
        page: int = 1,
        page_size: int | None = None,
    ) -> Page[Invocation]:
        return await self._send(self._op_list_invocations(tool, status, principal, page, page_size))

    async def get_invocation(self, invocation_id: str | UUID) -> Invocation:
        return await self._send(self._op_get_invocation(invocation_id))

    async def create_human_request(
        self,
        title: str,
        prompt: str = "",
        *,
        kind: str = "question",
        context: dict[str, Any] | None = None,
        options: list[str] | None = None,
        timeout_seconds: int = 3600,
        approvals_required: int = 1,
    ) -> HumanRequest:
        return await self._send(
            self._op_create_human_request(
                title, prompt, kind, context, options, timeout_seconds, approvals_required
            )
        )

    async def list_human_requests(
        self, *, status: str | None = None, page: int = 1, page_size: int | None = None
    ) -> Page[HumanRequest]:
        return await self._send(self._op_list_human_requests(status, page, page_size))

    async def get_human_request(self, request_id: str | UUID) -> HumanRequest:
        return await self._send(self._op_get_human_request(request_id))

    async def respond(
        self,
        request_id: str | UUID,
        decision: str,
        *,
        option: str = "",
        answer: str = "",
        comment: str = "",
        grant_hours: int | None = None,
        grant_arguments: str = "exact",
    ) -> HumanRequest:
        """See :meth:`QMCPClient.respond`."""
        return await self._send(
            self._op_respond(
                request_id, decision, option, answer, comment, grant_hours, grant_arguments
            )
        )

    async def delegate(self, request_id: str | UUID, to: str, *, comment: str = "") -> HumanRequest:
        """See :meth:`QMCPClient.delegate`."""
        return await self._send(self._op_delegate(request_id, to, comment))

    async def explain_policy(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        user: str | None = None,
        client: str = "",
    ) -> PolicyExplanation:
        """See :meth:`QMCPClient.explain_policy`."""
        return await self._send(self._op_explain_policy(tool, arguments, user, client))

    async def approve(self, request_id: str | UUID, comment: str = "") -> HumanRequest:
        return await self.respond(request_id, "approve", comment=comment)

    async def reject(self, request_id: str | UUID, comment: str = "") -> HumanRequest:
        return await self.respond(request_id, "reject", comment=comment)

    async def wait_for_response(
        self,
        request_id: str | UUID,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[HumanRequest], None] | None = None,
    ) -> HumanRequest:
        poll = _Poll(timeout, poll_interval, on_poll)
        while True:
            request = await self.get_human_request(request_id)
            if not request.is_pending:
                return request
            await asyncio.sleep(poll.next(request, _no_decision(request_id, timeout)))

    async def wait_for_invocation(
        self,
        invocation_id: str | UUID,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[Invocation], None] | None = None,
    ) -> Invocation:
        poll = _Poll(timeout, poll_interval, on_poll)
        while True:
            invocation = await self.get_invocation(invocation_id)
            if invocation.is_final:
                return invocation
            await asyncio.sleep(poll.next(invocation, _not_final(invocation, timeout)))

    async def invoke_and_wait(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        /,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[Any], None] | None = None,
        **kwargs,
    ) -> Invocation:
        deadline = time.monotonic() + timeout
        invocation = await self.call_tool(name, _merge(arguments, kwargs))
        if invocation.is_final:
            return invocation
        if invocation.human_request_id is not None and invocation.awaiting_approval:
            await self.wait_for_response(
                invocation.human_request_id,
                timeout=max(0.0, deadline - time.monotonic()),
                poll_interval=poll_interval,
                on_poll=on_poll,
            )
        return await self.wait_for_invocation(
            invocation.id,
            timeout=max(0.0, deadline - time.monotonic()),
            poll_interval=min(poll_interval, 0.25),
            on_poll=on_poll,
        )
