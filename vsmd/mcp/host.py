"""The server half inside a VSM: one MCP session per client, all on the VSM's own loop.

A session is keyed by who speaks (sender and broker user), where its answers go (reply_to)
and the client's session id, so nobody can speak into another's session. Each is bounded: a
request that finds ``buffer`` requests of its session still running gets a BUSY error at once
instead of queueing without limit, and at most ``max_sessions`` live at once (the least
recently used one is closed to make room). A session idle for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.runner import ServerRunner, aclose_shielded
from mcp.shared.message import SessionMessage

from vsmd.errors import ProtocolError, VsmdError
from vsmd.mcp import wire
from vsmd.mcp.dispatch import SessionDispatcher
from vsmd.mcp.registry import NONE, Caller, McpRegistry
from vsmd.protocol import Envelope

log = logging.getLogger("vsmd.mcp")

# (reply_to, correlation id, body): publish one message to a client's reply address.
Publish = Callable[[str, str, bytes], Awaitable[None]]
Key = tuple[str, str, str, str]  # sender, broker user, reply_to, session id


@dataclass(frozen=True)
class Limits:
    buffer: int = 16  # requests a session runs at once before BUSY
    max_sessions: int = 64
    idle_timeout: float = 600.0


@dataclass(eq=False)
class Session:
    """What the SDK's handlers see as ``ctx.lifespan_context``."""

    key: Key
    caller: Caller
    host: McpHost
    dispatcher: SessionDispatcher
    connection: Connection | None = None
    last_used: float = field(default_factory=time.monotonic)
    subscriptions: set[str] = field(default_factory=set)


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
        self._closing: set[asyncio.Task[None]] = set()  # cleanups and notices under way

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
            message = wire.parse(raw)
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
        if not session.dispatcher.receive(message):
            self.busy += 1
            n = self.limits.buffer
            text = f"{self.path}: this session has {n} requests running; retry later"
            await self._answer(reply_to, sid, wire.error(message.id, wire.BUSY, text))

    async def _open_for(
        self, key: Key, caller: Caller, reply_to: str, sid: str, message: wire.Inbound
    ) -> Session | None:
        """A new session for an ``initialize``; anything else is answered with why not."""
        rid = message.id if message.kind == "request" else None
        if caller.role == NONE:
            self.refused += 1
            if rid is not None:
                text = (
                    f"{caller.describe()} has no authority over {self.path}: "
                    "only the VSM itself, its ancestors, the daemon and operators"
                )
                await self._answer(reply_to, sid, wire.error(rid, wire.UNAUTHORIZED, text))
            return None
        if rid is None or message.method != "initialize":
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
        if self._init is None:
            # The server is shared by every VSM of a fork server; what initialize names is ours.
            opts = self.server.create_initialization_options()
            self._init = opts.model_copy(update={"server_name": self.name})

        async def send(message: dict[str, Any]) -> None:
            await self._send(reply_to, sid, {"session": sid, "message": message})

        session = Session(key, caller, self, SessionDispatcher(send, self.limits.buffer))
        # The handshake-era loop of the SDK (``initialize`` first), which is all _open_for
        # lets in: a request without a session is refused above.
        session.connection = Connection.for_loop(session.dispatcher, session_id=sid)
        runner = ServerRunner(self.server, session.connection, session, init_options=self._init)
        session.dispatcher.bind(runner.on_request, runner.on_notify)
        self.sessions[key] = session
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return session

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
            session.dispatcher.close()
            if session.connection is not None:  # what the server's handlers left to clean up
                task = asyncio.get_running_loop().create_task(aclose_shielded(session.connection))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

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
                if session.connection is not None:
                    task = asyncio.get_running_loop().create_task(
                        session.connection.send_resource_updated(uri)  # never raises
                    )
                    self._closing.add(task)  # held until done: the loop keeps weak references
                    task.add_done_callback(self._closing.discard)
