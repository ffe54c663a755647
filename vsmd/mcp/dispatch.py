"""One MCP session on a VSM: JSON-RPC from the inbox straight into the SDK's ``ServerRunner``,
its answers straight to the client's reply address.

The SDK's own stream-backed dispatcher moves every message through a memory stream and a task
each way (its dual-era loop adds a third), and builds a pydantic model of each message before
the runner validates its params. Over AMQP a message arrives whole on the VSM's loop, so this
hands each request to a task of its own at once and publishes the answer from that task: the
SDK still negotiates, validates params and shapes results (``ServerRunner``), this only carries
them. The SDK's ``Outbound`` (``send_raw_request``, ``notify``) makes it the session's
connection channel, so server-initiated requests and notifications work as on any transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from mcp.shared.dispatcher import CallOptions, OnNotify, OnRequest, coerce_request_id
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.jsonrpc_dispatcher import (
    cancelled_request_id_from_params,
    handler_exception_to_error_data,
    progress_token_from_params,
)
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    ErrorData,
    RequestId,
)
from pydantic import ValidationError

from vsmd.mcp.wire import Inbound

log = logging.getLogger("vsmd.mcp")

Send = Callable[[dict[str, Any]], Awaitable[None]]
TRANSPORT = TransportContext(kind="amqp", can_send_request=True)


class Peer(Protocol):
    """The side a handler answers through: a VSM's session, or a client's."""

    closed: bool

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None: ...

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]: ...


@dataclass(eq=False)
class RequestContext:
    """The SDK's ``DispatchContext`` of one inbound message: its id, its cancellation, and the
    way back to the peer while it is handled (progress, notifications, requests)."""

    owner: Peer
    request_id: RequestId | None
    progress_token: str | int | None = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)
    transport: TransportContext = TRANSPORT
    message_metadata: None = None
    closed: bool = False

    @property
    def can_send_request(self) -> bool:
        return not self.closed and not self.owner.closed

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        if not self.closed:
            await self.owner.notify(method, params, opts)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        if not self.can_send_request:
            raise NoBackChannelError(method)
        return await self.owner.send_raw_request(method, params, opts)

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.notify("notifications/progress", params)

    def close(self) -> None:
        self.closed = True


async def answer_of(
    on_request: OnRequest, dctx: RequestContext, method: str, params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The JSON-RPC answer to one request: its result, or the error its handler raised (the
    SDK's boundary: a handler's failure is an error answer, never the session's end)."""
    answer: dict[str, Any] = {"jsonrpc": "2.0", "id": dctx.request_id}
    try:
        answer["result"] = await on_request(dctx, method, params)
    except Exception as exc:
        error = handler_exception_to_error_data(exc)
        if error is None:
            log.exception("an MCP handler of %s failed", method)
            error = ErrorData(code=INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")
        answer["error"] = error.model_dump(mode="json", exclude_none=True)
    return answer


def error_of(data: dict[str, Any]) -> MCPError:
    """The peer's JSON-RPC error as the SDK raises it; a malformed one says so."""
    try:
        return MCPError.from_error_data(ErrorData.model_validate(data))
    except ValidationError:
        return MCPError(INVALID_REQUEST, f"a malformed error answer: {str(data)[:200]}")


async def _unbound(*_args: Any) -> Any:
    raise MCPError(INTERNAL_ERROR, "the session is not ready")


class SessionDispatcher:
    """Requests in flight at most ``limit``: one more is refused (``receive`` says False) and
    the host answers it BUSY; notifications being handled at most ``limit`` too, one more is
    dropped. So a flood costs a refusal each, never unbounded memory."""

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self.limit = limit
        self.closed = False
        self._on_request: OnRequest = _unbound
        self._on_notify: OnNotify = _unbound
        self._running: dict[RequestId, tuple[asyncio.Task[None], RequestContext]] = {}
        self._waiting: dict[RequestId, asyncio.Future[dict[str, Any]]] = {}  # ours, to the client
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()  # notifications being handled
        self.dropped = 0  # notifications that found ``limit`` others being handled

    def bind(self, on_request: OnRequest, on_notify: OnNotify) -> None:
        self._on_request, self._on_notify = on_request, on_notify

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # --- inbound ---------------------------------------------------------------------------

    def receive(self, msg: Inbound) -> bool:
        """Take one message from the client; False when it is a request there is no room for.

        Requests start in arrival order and ``initialize`` runs to its end without yielding
        (the runner awaits nothing there), so a request pipelined behind it finds the session
        initialized, as the SDK's inline handling of ``initialize`` guarantees."""
        if self.closed:
            return True
        loop = asyncio.get_running_loop()
        if msg.kind == "request":
            assert msg.id is not None and msg.method is not None
            if len(self._running) >= self.limit:
                return False
            dctx = RequestContext(self, msg.id, progress_token_from_params(msg.params))
            task = loop.create_task(self._handle(msg.id, msg.method, msg.params, dctx))
            self._running[coerce_request_id(msg.id)] = (task, dctx)
        elif msg.kind == "notification":
            assert msg.method is not None
            if msg.method == "notifications/cancelled":
                self._cancelled(msg.params)
            elif msg.method == "notifications/progress":
                return True  # this server sends no requests that report progress back
            if len(self._tasks) >= self.limit:  # fire and forget: under a flood, dropped
                self.dropped += 1
                return True
            task = loop.create_task(self._notified(msg.method, msg.params))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._answered(msg)
        return True

    def _cancelled(self, params: Mapping[str, Any] | None) -> None:
        rid = cancelled_request_id_from_params(params)
        entry = self._running.get(coerce_request_id(rid)) if rid is not None else None
        if entry is not None:
            task, dctx = entry
            dctx.cancel_requested.set()  # MCP: a cancelled request is never answered
            task.cancel()

    def _answered(self, msg: Inbound) -> None:
        fut = self._waiting.pop(coerce_request_id(msg.id), None) if msg.id is not None else None
        if fut is None or fut.done():
            log.debug("an answer for no request of ours: %r", msg.id)
        elif msg.error is not None:
            fut.set_exception(error_of(msg.error))
        else:
            fut.set_result(msg.result or {})

    async def _handle(
        self,
        rid: RequestId,
        method: str,
        params: Mapping[str, Any] | None,
        dctx: RequestContext,
    ) -> None:
        try:
            answer = await answer_of(self._on_request, dctx, method, params)
        except asyncio.CancelledError:
            if dctx.cancel_requested.is_set() or self.closed:
                return  # the client cancelled it, or the session ended: nobody waits
            raise
        finally:
            dctx.close()
            key = coerce_request_id(rid)
            entry = self._running.get(key)
            if entry is not None and entry[1] is dctx:
                del self._running[key]
        if dctx.cancel_requested.is_set() or self.closed:
            return
        try:
            await self._send(answer)
        except TypeError as exc:  # orjson's: a result JSON cannot carry; the caller hears why
            log.warning("an MCP answer to %s could not be encoded: %s", method, exc)
            text = f"the answer to {method} cannot be encoded as JSON: {exc}"
            error = {"code": INTERNAL_ERROR, "message": text}
            await self._send({"jsonrpc": "2.0", "id": rid, "error": error})

    async def _notified(self, method: str, params: Mapping[str, Any] | None) -> None:
        try:
            await self._on_notify(RequestContext(self, None), method, params)
        except Exception:
            log.exception("an MCP notification handler of %s failed", method)

    # --- outbound: the SDK's Outbound of this session's connection -------------------------

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        if self.closed:
            return
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = dict(params)
        await self._send(msg)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        if self.closed:
            raise MCPError(CONNECTION_CLOSED, "Connection closed")
        opts = opts or {}
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = dict(params)
        try:
            await self._send(msg)
            return await asyncio.wait_for(fut, opts.get("timeout"))
        except TimeoutError:
            await self.notify("notifications/cancelled", {"requestId": rid, "reason": "timeout"})
            raise MCPError(REQUEST_TIMEOUT, f"no answer to {method} in time") from None
        finally:
            self._waiting.pop(rid, None)

    def close(self) -> None:
        """The session ended: handlers still running stop, our own requests fail."""
        self.closed = True
        for task, _dctx in list(self._running.values()):
            task.cancel()
        self._running.clear()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(MCPError(CONNECTION_CLOSED, "Connection closed"))
        self._waiting.clear()
