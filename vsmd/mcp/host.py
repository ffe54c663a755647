"""The server half inside a VSM: one MCP session per client, all on the VSM's own loop.

A session is keyed by who speaks (sender and broker user), where its answers go (reply_to)
and the client's session id, so nobody can speak into another's session. Each has bounded
buffers: a request that finds its session's buffer full gets a BUSY error at once instead of
queueing without limit, and at most ``max_sessions`` live at once (the least recently used
one is closed to make room). A session idle for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.runner import serve_dual_era_loop
from mcp.shared.message import SessionMessage

from vsmd.errors import ProtocolError, VsmdError
from vsmd.mcp import wire
from vsmd.mcp.registry import NONE, Caller, McpRegistry
from vsmd.protocol import Envelope

log = logging.getLogger("vsmd.mcp")

# (reply_to, correlation id, body): publish one message to a client's reply address.
Publish = Callable[[str, str, bytes], Awaitable[None]]
Key = tuple[str, str, str, str]  # sender, broker user, reply_to, session id


@dataclass(frozen=True)
class Limits:
    buffer: int = 16  # messages a session holds before BUSY
    max_sessions: int = 64
    idle_timeout: float = 600.0


@dataclass(eq=False)
class Session:
    """What the SDK's handlers see as ``ctx.lifespan_context``."""

    key: Key
    caller: Caller
    host: McpHost
    inbound: MemoryObjectSendStream[SessionMessage | Exception]
    last_used: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    subscriptions: set[str] = field(default_factory=set)
    peer: Any = None  # the SDK's ServerSession, known once it subscribed to something


class McpHost:
    def __init__(
        self,
        server: Server[Session],
        registry: McpRegistry,
        publish: Publish,
        vsm_id: str,
        path: str,
        limits: Limits | None = None,
    ) -> None:
        self.server = server
        self.registry = registry
        self.name = f"vsm {path.rsplit('.', 1)[-1]}"
        self._publish = publish
        self.vsm_id = vsm_id
        self.path = path
        self.limits = limits or Limits()
        self.sessions: dict[Key, Session] = {}
        self.busy = 0  # requests answered BUSY
        self.refused = 0  # messages refused (malformed, unknown session, no authority)
        self._init: InitializationOptions | None = None  # made for the first session
        self._reaper: asyncio.Task[None] | None = None
        self._notify_soon: set[str] = set()

    # --- inbound ---------------------------------------------------------------------------

    async def deliver(self, env: Envelope, reply_to: str | None, caller: Caller) -> None:
        sid = env.body.get("session")
        if not isinstance(sid, str) or not 0 < len(sid) <= wire.MAX_SESSION_ID:
            raise ProtocolError(f"mcp: 'session' must be a string of 1-{wire.MAX_SESSION_ID} chars")
        if not reply_to:
            raise ProtocolError("mcp: a message needs a reply_to address for its answers")
        key: Key = (caller.id, caller.user or "", reply_to, sid)
        if env.body.get("close") is True:
            self._close(key)
        elif env.body.get("probe") is True:
            # A client with requests out asks whether we still hold its session: a restarted
            # VSM (same inbox, new process) does not, and its requests will never be answered.
            await self._send(reply_to, sid, {"session": sid, "probe": key in self.sessions})
        else:
            await self._message(key, caller, reply_to, sid, env.body.get("message"))

    async def _message(self, key: Key, caller: Caller, reply_to: str, sid: str, raw: Any) -> None:
        try:
            message = wire.from_wire(raw)
        except ProtocolError as err:
            self.refused += 1
            await self._answer(
                reply_to, sid, wire.error(wire.request_id(raw), types.INVALID_REQUEST, err.message)
            )
            return
        session = self.sessions.get(key)
        if session is None:
            session = await self._open_for(key, caller, reply_to, sid, message)
            if session is None:
                return
        session.last_used = time.monotonic()
        try:
            session.inbound.send_nowait(message)
        except anyio.WouldBlock:
            self.busy += 1
            if wire.is_request(message):
                n = self.limits.buffer
                text = f"{self.path}: this session has {n} messages waiting; retry later"
                await self._answer(reply_to, sid, wire.error(wire.request_id(raw), wire.BUSY, text))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.sessions.pop(key, None)

    async def _open_for(
        self, key: Key, caller: Caller, reply_to: str, sid: str, message: SessionMessage
    ) -> Session | None:
        """A new session for an ``initialize``; anything else is answered with why not."""
        m = message.message
        rid = m.id if isinstance(m, types.JSONRPCRequest) else None
        if caller.role == NONE:
            self.refused += 1
            if rid is not None:
                text = (
                    f"{caller.describe()} has no authority over {self.path}: "
                    "only the VSM itself, its ancestors, the daemon and operators"
                )
                await self._answer(reply_to, sid, wire.error(rid, wire.UNAUTHORIZED, text))
            return None
        if not isinstance(m, types.JSONRPCRequest) or m.method != "initialize":
            if rid is not None:
                self.refused += 1
                text = f"{self.path} holds no MCP session {sid!r} (restarted?): initialize first"
                await self._answer(reply_to, sid, wire.error(rid, wire.SESSION_UNKNOWN, text))
            return None
        if len(self.sessions) >= self.limits.max_sessions:
            oldest = min(self.sessions.values(), key=lambda s: s.last_used)
            log.info(
                "vsm %s: closing the least recently used MCP session to make room", self.vsm_id
            )
            self._close(oldest.key)
        return self._open(key, caller, reply_to, sid)

    def _open(self, key: Key, caller: Caller, reply_to: str, sid: str) -> Session:
        c2s_send, c2s_recv = anyio.create_memory_object_stream[SessionMessage | Exception](
            self.limits.buffer
        )
        s2c_send, s2c_recv = anyio.create_memory_object_stream[SessionMessage](self.limits.buffer)
        if self._init is None:
            # The server is shared by every VSM of a fork server; what initialize names is ours.
            opts = self.server.create_initialization_options()
            self._init = opts.model_copy(update={"server_name": self.name})
        session = Session(key, caller, self, c2s_send)
        self.sessions[key] = session
        session.task = asyncio.get_running_loop().create_task(
            self._serve(session, c2s_recv, s2c_send, s2c_recv, reply_to, sid)
        )
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return session

    async def _serve(
        self,
        session: Session,
        c2s_recv: MemoryObjectReceiveStream[SessionMessage | Exception],
        s2c_send: MemoryObjectSendStream[SessionMessage],
        s2c_recv: MemoryObjectReceiveStream[SessionMessage],
        reply_to: str,
        sid: str,
    ) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump_out, s2c_recv, reply_to, sid)
                await serve_dual_era_loop(
                    self.server, c2s_recv, s2c_send, lifespan_state=session, init_options=self._init
                )
        except Exception:
            log.exception("vsm %s: an MCP session failed", self.vsm_id)
        finally:
            if self.sessions.get(session.key) is session:
                del self.sessions[session.key]

    async def _pump_out(
        self, s2c_recv: MemoryObjectReceiveStream[SessionMessage], reply_to: str, sid: str
    ) -> None:
        async with s2c_recv:
            async for message in s2c_recv:
                await self._answer(reply_to, sid, message)

    async def _answer(self, reply_to: str, sid: str, message: SessionMessage) -> None:
        await self._send(reply_to, sid, {"session": sid, "message": wire.to_wire(message)})

    async def _send(self, reply_to: str, sid: str, body: dict[str, Any]) -> None:
        env = Envelope(type=wire.ENVELOPE_TYPE, sender=self.vsm_id, path=self.path, body=body)
        try:
            await self._publish(reply_to, sid, env.encode())
        except VsmdError as err:  # the broker is gone: the client's transport fails the call
            log.info("vsm %s: an MCP answer was lost: %s", self.vsm_id, err.message)

    # --- session ends ----------------------------------------------------------------------

    def _close(self, key: Key) -> None:
        session = self.sessions.pop(key, None)
        if session is not None:
            session.inbound.close()  # the server loop sees the end of its stream and returns

    async def _reap(self) -> None:
        while self.sessions:
            await asyncio.sleep(min(60.0, self.limits.idle_timeout / 4))
            cutoff = time.monotonic() - self.limits.idle_timeout
            for key in [k for k, s in self.sessions.items() if s.last_used < cutoff]:
                self._close(key)

    async def close(self) -> None:
        for key in list(self.sessions):
            self._close(key)
        if self._reaper is not None:
            self._reaper.cancel()

    # --- change notifications --------------------------------------------------------------

    def changed(self, uri: str) -> None:
        """``uri`` changed: subscribers hear of it once per loop turn, however many writes."""
        if not any(uri in s.subscriptions for s in self.sessions.values()):
            return
        if not self._notify_soon:
            asyncio.get_running_loop().call_soon(self._notify)
        self._notify_soon.add(uri)

    def _notify(self) -> None:
        uris, self._notify_soon = self._notify_soon, set()
        for session in list(self.sessions.values()):
            for uri in uris & session.subscriptions:
                if session.peer is not None:
                    asyncio.get_running_loop().create_task(self._send_updated(session, uri))

    async def _send_updated(self, session: Session, uri: str) -> None:
        with contextlib.suppress(Exception):  # a closed session: nobody left to tell
            await session.peer.send_resource_updated(uri)
