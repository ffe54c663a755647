"""The client half: the SDK's ``Dispatcher`` for a ``ClientSession`` with one VSM, carried over
the tree's exchange.

The SDK takes a transport either as a stream pair or as a dispatcher; this is the dispatcher,
so a request goes from ``ClientSession`` to the broker and its answer back to the waiting call
without memory streams and the tasks that pump them (see vsmd/mcp/dispatch.py, its server
counterpart).

Every failure becomes the JSON-RPC error (an ``MCPError``) of the request it hit, so a
``ClientSession`` never waits for an answer that cannot come: a VSM that is unknown or down
(the broker returns the mandatory publish), one that goes down while requests are out (a probe
every second finds its inbox gone), a lost broker connection. After any of these, or when the
VSM says it holds no such session (it restarted), the next request first opens a fresh session
on the VSM with the ``initialize`` the client sent at the start, so the same ``ClientSession``
keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from mcp.shared.dispatcher import (
    CallOptions,
    OnNotify,
    OnNotifyIntercept,
    OnRequest,
    ProgressFnT,
    as_request_id,
    coerce_request_id,
    run_notify_intercept,
)
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    RequestId,
)

from vsmd.errors import BrokerError, ProtocolError, Unreachable, VsmdError, from_dict
from vsmd.mcp import wire
from vsmd.mcp.dispatch import RequestContext, answer_of, error_of
from vsmd.mcp.wire import REPLY_TO, Link
from vsmd.protocol import Envelope, loads_object

log = logging.getLogger("vsmd.mcp")

PROBE_EVERY = 1.0
REINIT_TIMEOUT = 30.0
MAX_REPLY = 16 << 20
# What the VSM sends unasked (its requests, notifications) being handled at once at most: one
# more request is answered BUSY, one more notification dropped, so a flood costs no memory.
INBOUND = 64


@dataclass(eq=False)
class _Waiting:
    """A request out and unanswered: kept whole, to send again on a session opened anew."""

    fut: asyncio.Future[dict[str, Any]]
    message: dict[str, Any]
    on_progress: ProgressFnT | None = None


async def _nothing(*_args: Any) -> Any:
    return None


async def _contained(work: Awaitable[Any]) -> None:
    """A handler of the session's (a notification, a progress callback) that fails costs only
    its own message."""
    try:
        await work
    except Exception:
        log.exception("an MCP client handler failed")


class ClientDispatcher:
    """``async with ClientDispatcher(link, key, label, sender) as d``, then
    ``ClientSession(dispatcher=d)``; the session drives :meth:`run`."""

    def __init__(self, link: Link, key: str, label: str, sender: str, path: str = "") -> None:
        self.link = link
        self.key = key
        self.label = label
        self.sender = sender
        self.path = path
        self.sid = uuid.uuid4().hex
        self.closed = False
        self.reopened = 0
        self._waiting: dict[RequestId, _Waiting] = {}
        self._ids = itertools.count(1)
        self._init: dict[str, Any] | None = None  # the client's initialize, for re-opening
        self._initialized: dict[str, Any] | None = None
        self._stale = False  # the VSM may not know our session any more
        self._probed = False  # a probe went out for the requests now waiting
        self._reopen_lock = asyncio.Lock()
        self._internal: dict[str, asyncio.Future[wire.Inbound]] = {}
        self._on_request: OnRequest = _nothing
        self._on_notify: OnNotify = _nothing
        self._intercept: OnNotifyIntercept | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbound: set[asyncio.Task[Any]] = set()  # the VSM's requests and notifications
        self.dropped = 0  # the VSM's notifications dropped for want of room

    async def __aenter__(self) -> ClientDispatcher:
        await self.link.listen(self.sid, self)
        self._spawn(self._prober())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        self.link.unlisten(self.sid)
        self._fail_all(CONNECTION_CLOSED, "Connection closed")
        with contextlib.suppress(Exception):  # the VSM may be gone: then nothing to close
            await asyncio.wait_for(
                self._post({"session": self.sid, "close": True}, mandatory=False), 2.0
            )

    async def run(
        self,
        on_request: OnRequest,
        on_notify: OnNotify,
        on_notify_intercept: OnNotifyIntercept | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answers arrive on the link's consumer, not here: this only holds the handlers of
        what the VSM sends unasked, until the session's task group ends it."""
        self._on_request, self._on_notify = on_request, on_notify
        self._intercept = on_notify_intercept
        task_status.started()
        await anyio.sleep_forever()

    async def settle(self, timeout: float) -> None:
        """Wait until every request sent has its answer (or its error), at most ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._waiting and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def _spawn(self, coro: Awaitable[Any], inbound: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(_contained(coro))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)
        if inbound:
            self._inbound.add(task)
            task.add_done_callback(self._inbound.discard)

    # --- outbound --------------------------------------------------------------------------

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        if self.closed:
            raise MCPError(CONNECTION_CLOSED, "Connection closed")
        opts = opts or {}
        rid, waiting = self._request(method, params, opts)
        key = coerce_request_id(rid)
        abandon = opts.get("cancel_on_abandon", True)
        sent = False
        try:
            await self._send(waiting.message)
            sent = True
            return await asyncio.wait_for(waiting.fut, opts.get("timeout"))
        except TimeoutError:
            if abandon:
                await self._cancel(rid, f"timed out after {opts.get('timeout')}s")
            raise MCPError(REQUEST_TIMEOUT, f"Request {method!r} timed out") from None
        except asyncio.CancelledError:
            if abandon and sent:
                with anyio.CancelScope(shield=True):
                    await self._cancel(rid, "caller cancelled")
            raise
        finally:
            self._waiting.pop(key, None)

    def _request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions
    ) -> tuple[RequestId, _Waiting]:
        """The request's id and message, registered as waiting for its answer."""
        out = dict(params) if params is not None else {}
        if method == "initialize":
            self._init = out
        rid = opts.get("request_id")
        if rid is None:
            rid = next(self._ids)
            while rid in self._waiting:
                rid = next(self._ids)
        key = coerce_request_id(rid)
        if key in self._waiting:
            raise ValueError(f"request id {rid!r} is already in flight")
        on_progress = opts.get("on_progress")
        if on_progress is not None:  # the request id doubles as its progress token
            out["_meta"] = {**(out.get("_meta") or {}), "progressToken": rid}
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if out:
            message["params"] = out
        waiting = _Waiting(asyncio.get_running_loop().create_future(), message, on_progress)
        self._waiting[key] = waiting
        return rid, waiting

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        if method == "notifications/initialized":
            self._initialized = message
        with contextlib.suppress(VsmdError):  # fire and forget, as the SDK's own transports
            await self._post({"session": self.sid, "message": message})

    async def _cancel(self, rid: RequestId, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.notify("notifications/cancelled", {"requestId": rid, "reason": reason}), 2.0
            )

    async def _post(self, body: dict[str, Any], mandatory: bool = True) -> None:
        env = Envelope(type=wire.ENVELOPE_TYPE, sender=self.sender, path=self.path, body=body)
        await self.link.send(
            self.key, env.encode(), reply_to=REPLY_TO, correlation_id=self.sid, mandatory=mandatory
        )

    async def _send(self, message: dict[str, Any]) -> None:
        """Publish a request, first opening the session anew if the VSM may have lost it;
        the MCPError of the request when it cannot go."""
        try:
            if self._stale and message["method"] != "initialize":
                async with self._reopen_lock:  # one reopen, and every request waits for it
                    if self._stale:
                        await self._reopen()
            await self._post({"session": self.sid, "message": message})
        except Unreachable:
            self._stale = True
            raise MCPError(wire.UNREACHABLE, f"{self.label} is unknown or down") from None
        except BrokerError as err:
            self._stale = True
            raise MCPError(wire.BROKER_LOST, f"cannot reach {self.label}: {err.message}") from None
        except VsmdError as err:
            text = f"cannot reopen the session with {self.label}: {err.message}"
            raise MCPError(wire.UNREACHABLE, text) from None

    async def _reopen(self) -> None:
        """A new session on the VSM, opened with the client's own initialize."""
        if self._init is None:
            raise ProtocolError("the session was never initialized")
        self.link.unlisten(self.sid)
        old, self.sid = self.sid, uuid.uuid4().hex
        with contextlib.suppress(VsmdError):  # a VSM that still holds the old one frees it now
            await self._post({"session": old, "close": True}, mandatory=False)
        await self.link.listen(self.sid, self)
        rid = f"vsmd-reopen-{next(self._ids)}"
        fut: asyncio.Future[wire.Inbound] = asyncio.get_running_loop().create_future()
        self._internal[rid] = fut
        try:
            init = {"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": self._init}
            await self._post({"session": self.sid, "message": init})
            try:
                answer = await asyncio.wait_for(fut, REINIT_TIMEOUT)
            except TimeoutError:
                raise Unreachable(f"{self.label} did not answer initialize") from None
        finally:
            self._internal.pop(rid, None)
        if answer.error is not None:
            why = answer.error.get("message")
            raise Unreachable(f"{self.label} refused initialize: {why}")
        if self._initialized is not None:
            await self._post({"session": self.sid, "message": self._initialized})
        self._stale = False
        self.reopened += 1

    def _fail_all(self, code: int, text: str) -> None:
        self._stale = True
        for waiting in self._waiting.values():
            if not waiting.fut.done():
                waiting.fut.set_exception(MCPError(code, text))
        for fut in self._internal.values():
            if not fut.done():
                fut.set_exception(Unreachable(text))

    async def _prober(self) -> None:
        """While requests are out, ask every second whether the VSM still holds our session:
        no inbox (the publish comes back) or a restarted VSM (it says no) fails them."""
        while True:
            await asyncio.sleep(PROBE_EVERY)
            if not self._waiting:
                self._probed = False
                continue
            self._probed = True
            try:
                await self._post({"session": self.sid, "probe": True})
            except Unreachable:
                self._fail_all(wire.UNREACHABLE, f"{self.label} went down before it answered")
            except BrokerError:
                pass  # on_lost tells

    # --- inbound: the link's consumer calls these ------------------------------------------

    async def on_lost(self) -> None:
        self._fail_all(wire.BROKER_LOST, f"lost the broker while waiting for {self.label}")

    async def on_returned(self, error: Unreachable) -> None:
        """A link that does not confirm (a VSM's own) returns a post here, not from _post.
        After a probe went out, the VSM was there when the request was sent."""
        if self._probed:
            self._fail_all(wire.UNREACHABLE, f"{self.label} went down before it answered")
        else:
            self._fail_all(wire.UNREACHABLE, f"{self.label} is unknown or down")

    async def on_message(self, body: bytes) -> None:
        try:
            data = loads_object(body, MAX_REPLY)
            if data.get("ok") is False:  # the VSM refused the envelope itself
                err = from_dict(data.get("error") or {})
                code = wire.UNAUTHORIZED if err.code == "UNAUTHORIZED" else INVALID_REQUEST
                self._fail_all(code, f"{self.label}: {err.code}: {err.message}")
                return
            env = Envelope.from_object(data)
            if "probe" in env.body:  # only a "no" matters: the VSM restarted without us
                if env.body["probe"] is False and env.body.get("session") == self.sid:
                    self._fail_all(wire.UNREACHABLE, f"{self.label} went down before it answered")
                return
            msg = wire.parse(env.body.get("message"))
        except VsmdError as err:
            log.warning("a malformed MCP answer from %s: %s", self.label, err.message)
            return
        if msg.kind in ("result", "error"):
            self._answered(msg)
        elif len(self._inbound) >= INBOUND:
            await self._refuse(msg)
        elif msg.kind == "request":
            self._spawn(self._serve(msg), inbound=True)
        else:
            self._notified(msg)

    async def _refuse(self, msg: wire.Inbound) -> None:
        if msg.kind == "notification":
            self.dropped += 1
            return
        text = f"{self.sender} is handling {INBOUND} messages of {self.label}; retry later"
        error = {"code": wire.BUSY, "message": text}
        with contextlib.suppress(VsmdError):
            await self._post(
                {"session": self.sid, "message": {"jsonrpc": "2.0", "id": msg.id, "error": error}},
                mandatory=False,
            )

    def _answered(self, msg: wire.Inbound) -> None:
        if isinstance(msg.id, str) and msg.id in self._internal:
            fut = self._internal[msg.id]
            if not fut.done():
                fut.set_result(msg)
            return
        waiting = self._waiting.get(coerce_request_id(msg.id)) if msg.id is not None else None
        if waiting is None or waiting.fut.done():
            return  # late: its caller gave up
        if msg.error is not None and msg.error.get("code") == wire.SESSION_UNKNOWN:
            # It never ran on the VSM: safe to send again, on a session opened anew.
            self._stale = True
            self._spawn(self._again(waiting))
        elif msg.error is not None:
            waiting.fut.set_exception(error_of(msg.error))
        else:
            waiting.fut.set_result(msg.result or {})

    async def _again(self, waiting: _Waiting) -> None:
        try:
            await self._send(waiting.message)
        except MCPError as err:
            if not waiting.fut.done():
                waiting.fut.set_exception(err)

    def _notified(self, msg: wire.Inbound) -> None:
        assert msg.method is not None
        params = msg.params or {}
        if msg.method == "notifications/progress":
            token = as_request_id(params.get("progressToken"))  # any JSON may come: checked
            found = self._waiting.get(coerce_request_id(token)) if token is not None else None
            progress = params.get("progress")
            if found is not None and found.on_progress and isinstance(progress, int | float):
                total, text = params.get("total"), params.get("message")
                self._spawn(
                    found.on_progress(
                        float(progress),
                        float(total) if isinstance(total, int | float) else None,
                        text if isinstance(text, str) else None,
                    )
                )
        if run_notify_intercept(self._intercept, msg.method, msg.params):
            return
        self._spawn(
            self._on_notify(RequestContext(self, None), msg.method, msg.params), inbound=True
        )

    async def _serve(self, msg: wire.Inbound) -> None:
        """A request of the VSM's (ping, sampling, roots …): the session's handler answers."""
        assert msg.method is not None
        answer = await answer_of(
            self._on_request, RequestContext(self, msg.id), msg.method, msg.params
        )
        with contextlib.suppress(VsmdError):
            await self._post({"session": self.sid, "message": answer}, mandatory=False)
