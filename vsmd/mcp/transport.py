"""The client half: the SDK's stream pair carried over the tree's exchange to one VSM.

Every failure becomes the JSON-RPC error of the request it hit, so a ``ClientSession`` never
waits for an answer that cannot come: a VSM that is unknown or down (the broker returns the
mandatory publish), one that goes down while requests are out (a probe every second finds its
inbox gone), a lost broker connection. After any of these, or when the VSM says it holds no
such session (it restarted), the next request first opens a fresh session on the VSM with the
``initialize`` the client sent at the start, so the same ``ClientSession`` keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Protocol

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from vsmd.errors import BrokerError, ProtocolError, Unreachable, VsmdError, from_dict
from vsmd.mcp import wire
from vsmd.protocol import Envelope, loads_object

log = logging.getLogger("vsmd.mcp")

PROBE_EVERY = 1.0
REINIT_TIMEOUT = 30.0
BUFFER = 64
MAX_REPLY = 16 << 20


class Listener(Protocol):
    async def on_message(self, body: bytes) -> None: ...

    async def on_lost(self) -> None: ...


class Link(Protocol):
    """A broker connection a client session rides on (a VSM's own, or a stand-alone one)."""

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        """Publish on the tree's exchange; Unreachable when mandatory and nobody is bound."""

    def listen(self, correlation_id: str, listener: Listener) -> Awaitable[None]:
        """Deliver replies with this correlation id to ``listener`` from now on."""

    def unlisten(self, correlation_id: str) -> None: ...


class ClientTransport:
    """``async with ClientTransport(link, key, label) as (read, write)``: for ``ClientSession``."""

    def __init__(self, link: Link, key: str, label: str, sender: str, path: str = "") -> None:
        self.link = link
        self.sender = sender
        self.path = path
        self.key = key
        self.label = label
        self.sid = uuid.uuid4().hex
        self._pending: dict[Any, SessionMessage] = {}  # requests out and unanswered, by id
        self._init: SessionMessage | None = None  # the client's initialize, kept for re-opening
        self._initialized: SessionMessage | None = None
        self._stale = False  # the VSM may not know our session any more
        self._internal: dict[str, asyncio.Future[SessionMessage]] = {}
        self._counter = itertools.count()
        self._in_send: MemoryObjectSendStream[SessionMessage | Exception] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # one writer on the wire at a time
        self.reopened = 0
        self._out: MemoryObjectReceiveStream[SessionMessage] | None = None
        self._writing = False

    async def __aenter__(
        self,
    ) -> tuple[
        MemoryObjectReceiveStream[SessionMessage | Exception],
        MemoryObjectSendStream[SessionMessage],
    ]:
        in_send, in_recv = anyio.create_memory_object_stream[SessionMessage | Exception](BUFFER)
        out_send, out_recv = anyio.create_memory_object_stream[SessionMessage](BUFFER)
        self._in_send = in_send
        await self.link.listen(self.sid, self)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(out_recv)), loop.create_task(self._prober())]
        return in_recv, out_send

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.link.unlisten(self.sid)
        with contextlib.suppress(
            VsmdError, Exception
        ):  # the VSM may be gone: then nothing to close
            await asyncio.wait_for(
                self._post({"session": self.sid, "close": True}, mandatory=False), 2.0
            )
        if self._in_send is not None:
            self._in_send.close()

    async def settle(self, timeout: float) -> None:
        """Wait until every request sent has its answer (or its error), at most ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def _busy(self) -> bool:
        queued = self._out is not None and self._out.statistics().current_buffer_used > 0
        return bool(self._pending) or self._writing or queued

    # --- outbound --------------------------------------------------------------------------

    async def _post(self, body: dict[str, Any], mandatory: bool = True) -> None:
        env = Envelope(type=wire.ENVELOPE_TYPE, sender=self.sender, path=self.path, body=body)
        await self.link.send(
            self.key, env.encode(), reply_to=REPLY_TO, correlation_id=self.sid, mandatory=mandatory
        )

    async def _writer(self, out_recv: MemoryObjectReceiveStream[SessionMessage]) -> None:
        self._out = out_recv
        async with out_recv:
            async for message in out_recv:
                self._writing = True
                try:
                    await self._send(message)
                finally:
                    self._writing = False

    async def _send(self, message: SessionMessage) -> None:
        m = message.message
        if isinstance(m, types.JSONRPCRequest) and m.method == "initialize":
            self._init = message
        elif isinstance(m, types.JSONRPCNotification) and m.method == "notifications/initialized":
            self._initialized = message
        async with self._lock:
            try:
                if self._stale and isinstance(m, types.JSONRPCRequest) and m.method != "initialize":
                    await self._reopen()
                if isinstance(m, types.JSONRPCRequest):
                    self._pending[m.id] = message
                await self._post({"session": self.sid, "message": wire.to_wire(message)})
            except Unreachable:
                self._stale = True
                await self._fail(m, wire.UNREACHABLE, f"{self.label} is unknown or down")
            except BrokerError as err:
                self._stale = True
                await self._fail(m, wire.BROKER_LOST, f"cannot reach {self.label}: {err.message}")
            except VsmdError as err:
                await self._fail(
                    m,
                    wire.UNREACHABLE,
                    f"cannot reopen the session with {self.label}: {err.message}",
                )

    async def _reopen(self) -> None:
        """A new session on the VSM, opened with the client's own initialize."""
        if self._init is None:
            raise ProtocolError("the session was never initialized")
        self.link.unlisten(self.sid)
        old, self.sid = self.sid, uuid.uuid4().hex
        with contextlib.suppress(VsmdError):  # a VSM that still holds the old one frees it now
            await self._post({"session": old, "close": True}, mandatory=False)
        await self.link.listen(self.sid, self)
        rid = f"vsmd-reopen-{next(self._counter)}"
        init = self._init.message
        assert isinstance(init, types.JSONRPCRequest)
        fut = asyncio.get_running_loop().create_future()
        self._internal[rid] = fut
        try:
            again = SessionMessage(
                types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=init.method, params=init.params)
            )
            await self._post({"session": self.sid, "message": wire.to_wire(again)})
            try:
                answer = await asyncio.wait_for(fut, REINIT_TIMEOUT)
            except TimeoutError:
                raise Unreachable(f"{self.label} did not answer initialize") from None
        finally:
            self._internal.pop(rid, None)
        if isinstance(answer.message, types.JSONRPCError):
            raise Unreachable(f"{self.label} refused initialize: {answer.message.error.message}")
        if self._initialized is not None:
            await self._post({"session": self.sid, "message": wire.to_wire(self._initialized)})
        self._stale = False
        self.reopened += 1

    async def _fail(self, m: Any, code: int, text: str) -> None:
        if isinstance(m, types.JSONRPCRequest):
            self._pending.pop(m.id, None)
            await self._deliver(wire.error(m.id, code, text))

    async def _fail_all(self, code: int, text: str) -> None:
        self._stale = True
        pending, self._pending = self._pending, {}
        for rid in pending:
            await self._deliver(wire.error(rid, code, text))
        for fut in self._internal.values():
            if not fut.done():
                fut.set_exception(Unreachable(text))

    async def _prober(self) -> None:
        """While requests are out, ask every second whether the VSM still holds our session:
        no inbox (the publish comes back) or a restarted VSM (it says no) fails them."""
        while True:
            await asyncio.sleep(PROBE_EVERY)
            if not self._pending:
                continue
            try:
                await self._post({"session": self.sid, "probe": True})
            except Unreachable:
                await self._fail_all(wire.UNREACHABLE, f"{self.label} went down before it answered")
            except BrokerError:
                pass  # on_lost tells

    # --- inbound ---------------------------------------------------------------------------

    async def _deliver(self, message: SessionMessage | Exception) -> None:
        if self._in_send is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._in_send.send(message)

    async def on_lost(self) -> None:
        await self._fail_all(wire.BROKER_LOST, f"lost the broker while waiting for {self.label}")

    async def on_message(self, body: bytes) -> None:
        try:
            data = loads_object(body, MAX_REPLY)
            if data.get("ok") is False:  # the VSM refused the envelope itself
                err = from_dict(data.get("error") or {})
                await self._fail_all(
                    wire.UNAUTHORIZED if err.code == "UNAUTHORIZED" else types.INVALID_REQUEST,
                    f"{self.label}: {err.code}: {err.message}",
                )
                return
            env = Envelope.decode(body, MAX_REPLY)
            if "probe" in env.body:  # only a "no" matters: the VSM restarted without us
                if env.body["probe"] is False and env.body.get("session") == self.sid:
                    text = f"{self.label} went down before it answered"
                    await self._fail_all(wire.UNREACHABLE, text)
                return
            message = wire.from_wire(env.body.get("message"))
        except VsmdError as err:
            log.warning("a malformed MCP answer from %s: %s", self.label, err.message)
            return
        m = message.message
        rid = getattr(m, "id", None)
        if isinstance(rid, str) and rid in self._internal:
            fut = self._internal[rid]
            if not fut.done():
                fut.set_result(message)
            return
        if (
            isinstance(m, types.JSONRPCError)
            and m.error.code == wire.SESSION_UNKNOWN
            and rid in self._pending
        ):
            # Never ran on the VSM: safe to send again, on a session opened anew.
            self._stale = True
            retry = self._pending.pop(rid)
            asyncio.get_running_loop().create_task(self._send(retry))
            return
        if isinstance(m, types.JSONRPCResponse | types.JSONRPCError):
            self._pending.pop(rid, None)
        await self._deliver(message)


REPLY_TO = "amq.rabbitmq.reply-to"
