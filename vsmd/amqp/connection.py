"""One AMQP 0-9-1 connection as an asyncio protocol: frames parsed in ``data_received`` and
handed to their channel there, frames written to the transport by whoever sends them.

The handshake (PLAIN, the broker's tuning, the virtual host), heartbeats on a timer of the loop
(no task), the broker's close, and flow control (``paused`` while the transport's buffer is
full) are here; the channel's methods in vsmd/amqp/channel.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from yarl import URL

from vsmd import __version__
from vsmd.amqp import inbound, wire
from vsmd.amqp.channel import Channel, Properties
from vsmd.amqp.errors import AmqpError, AuthRefused, ConnectionLost

log = logging.getLogger("vsmd.amqp")

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8
HEARTBEAT_FRAME = pframe.marshal(Heartbeat(), 0)
FRAME_MAX = 131072
CLOSE_TIMEOUT = 2.0
CAPABILITIES = {
    "publisher_confirms": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
}
ACCESS_REFUSED = 403
CloseCallback = Callable[["Connection", AmqpError], None]


class Connection(asyncio.Protocol):
    def __init__(self, url: URL, heartbeat: int, name: str | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        # yarl gives them decoded already: a "%41" left after that is the name's own.
        self._user = url.user or "guest"
        self._password = url.password or "guest"
        path = url.path[1:] if url.path.startswith("/") else url.path
        self._vhost = path or "/"
        self._heartbeat = heartbeat
        self._name = name
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []  # written at the end of this turn of the loop (_flush)
        self._buf = bytearray()
        self.frame_max = FRAME_MAX
        self.channels: dict[int, Channel] = {}
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.error: AmqpError | None = None  # set once the connection is over: why
        self._closing = False
        self._update: asyncio.Future[None] | None = None
        self.close_callbacks: list[CloseCallback] = []
        self.paused = False
        self._resumed: asyncio.Event | None = None
        self.blocked = False
        self._heard = self._wrote = True
        self._silent_ticks = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return self.opened.done() and self.error is None and not self._closing

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(PROTOCOL_HEADER)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        buf = self._buf
        buf += data
        pos, end_of_data = 0, len(buf)
        try:
            while end_of_data - pos >= 8:
                size = int.from_bytes(buf[pos + 3 : pos + 7], "big")
                end = pos + size + 8
                if end > end_of_data:
                    break
                if buf[end - 1] != FRAME_END:
                    raise AmqpError("a frame without its end marker")
                kind, number = buf[pos], (buf[pos + 1] << 8) | buf[pos + 2]
                start, pos = pos, end
                if kind == BODY:
                    channel = self.channels.get(number)
                    if channel is not None:
                        channel.on_body(bytes(buf[start + 7 : end - 1]))
                    continue
                if kind == HEARTBEAT:
                    continue
                self._dispatch(number, self._decode(kind, bytes(buf[start:end])))
        except (AmqpError, PAMQPException, ValueError) as exc:
            self._abort(ConnectionLost(f"a malformed frame from the broker: {exc}", 501))
            return
        finally:
            if pos:
                del buf[:pos]

    @staticmethod
    def _decode(kind: int, frame: bytes) -> Any:
        """A method or header frame decoded: what every message brings directly
        (vsmd/amqp/inbound.py), the rest through pamqp."""
        if kind == METHOD:
            which = inbound.method_id(frame)
            if which == inbound.DELIVER:
                return inbound.deliver(frame)
            if which == inbound.ACK:
                return inbound.ack(frame)
        elif kind == HEADER:
            fast = inbound.header(frame)
            if fast is not None:
                return fast
        return pframe.unmarshal(frame)[2]

    def _dispatch(self, number: int, frame: Any) -> None:
        if number == 0:
            self._on_connection_frame(frame)
            return
        channel = self.channels.get(number)
        if channel is None:
            return  # a channel we closed: the broker may still send until its close-ok
        if isinstance(frame, ContentHeader):
            channel.on_header(frame)
        else:
            channel.on_method(frame)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    async def drain(self) -> None:
        """Returns once the transport takes writes again (its buffer below the high mark)."""
        while self.paused and self.error is None:
            if self._resumed is None:
                self._resumed = asyncio.Event()
            await self._resumed.wait()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        error = self.error or ConnectionLost(
            f"the connection dropped: {exc}" if exc else "the broker closed the connection"
        )
        self._ended(error)
        if self._resumed is not None:
            self._resumed.set()
        if not self.closed.done():
            self.closed.set_result(None)

    # --- connection-level frames -------------------------------------------------------------

    def _on_connection_frame(self, frame: Any) -> None:
        if isinstance(frame, spec.Connection.Start):
            self._start_ok()
        elif isinstance(frame, spec.Connection.Tune):
            self._tune(frame)
        elif isinstance(frame, spec.Connection.Close):
            self._closed_by_broker(frame)
        elif isinstance(frame, spec.Connection.CloseOk):
            self._abort(ConnectionLost("connection closed by the client", 200))
        elif isinstance(frame, spec.Connection.Blocked):
            # Only noted: a publish while blocked waits in the socket, and confirms wait with it.
            log.warning("the broker blocks publishing: %s", frame.reason)
            self.blocked = True
        elif isinstance(frame, spec.Connection.Unblocked):
            self.blocked = False
        else:  # OpenOk, UpdateSecretOk: what a waiting step asked for
            done = self.opened if isinstance(frame, spec.Connection.OpenOk) else self._update
            if done is not None and not done.done():
                done.set_result(None)

    def _start_ok(self) -> None:
        properties: dict[str, Any] = {
            "product": "vsmd",
            "version": __version__,
            "capabilities": CAPABILITIES,
        }
        if self._name:
            properties["connection_name"] = self._name
        self.send_method(
            0,
            spec.Connection.StartOk(
                client_properties=properties,
                mechanism="PLAIN",
                response=f"\0{self._user}\0{self._password}",
                locale="en_US",
            ),
        )

    def _closed_by_broker(self, frame: spec.Connection.Close) -> None:
        self.send_method(0, spec.Connection.CloseOk())
        code, text = frame.reply_code or 0, frame.reply_text
        # At the handshake, 403 is the broker refusing the credentials.
        kind = AuthRefused if code == ACCESS_REFUSED and not self.opened.done() else ConnectionLost
        self._abort(kind(f"the broker closed the connection: {code} {text}", code))

    def _tune(self, tune: spec.Connection.Tune) -> None:
        ours, theirs = self._heartbeat, tune.heartbeat
        heartbeat = min(ours, theirs) if ours and theirs else 0
        self.frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        self.send_method(
            0,
            spec.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=self.frame_max, heartbeat=heartbeat
            ),
        )
        self.send_method(0, spec.Connection.Open(virtual_host=self._vhost))
        if heartbeat:
            self._beat_every = heartbeat / 2
            self._timer = self.loop.call_later(self._beat_every, self._beat)

    def _beat(self) -> None:
        """Every half heartbeat: send one unless something went out since the last tick; give
        the connection up after four silent ticks (two heartbeats, as the broker does)."""
        if self.error is not None or self._transport is None:
            return
        if not self._wrote and not self._transport.is_closing():
            self._transport.write(HEARTBEAT_FRAME)
        self._wrote = False
        self._silent_ticks = 0 if self._heard else self._silent_ticks + 1
        self._heard = False
        if self._silent_ticks >= 4:
            self._abort(ConnectionLost("the broker stopped answering (missed heartbeats)"))
            return
        self._timer = self.loop.call_later(self._beat_every, self._beat)

    # --- sending -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queued, and written with whatever else is sent in this turn of the loop: a reply and
        the ack of its request go out in one system call (the writes were a fifth of a
        VSM's CPU while it served MCP calls)."""
        if self.error is not None:
            raise self.error
        if self._transport is None or self._transport.is_closing():
            raise ConnectionLost("the connection is closed")
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(data)
        self._wrote = True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def send_method(self, number: int, method: Any) -> None:
        self._write(pframe.marshal(method, number))

    def send_frame(self, frame: bytes) -> None:
        """A frame encoded already (vsmd/amqp/wire.py)."""
        self._write(frame)

    def send_publish(
        self,
        number: int,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        properties: Properties,
        body: bytes,
    ) -> None:
        """A publish: its method, header and body frames in one write (vsmd/amqp/wire.py)."""
        self._write(
            wire.publish_frames(
                number, exchange, routing_key, mandatory, properties, body, self.frame_max
            )
        )

    # --- channels and the connection's life -------------------------------------------------

    async def channel(self, confirms: bool = False, prefetch: int | None = None) -> Channel:
        if not self.is_open:
            raise self.error or ConnectionLost("the connection is not open")
        number = next(n for n in range(1, len(self.channels) + 2) if n not in self.channels)
        channel = Channel(self, number)
        self.channels[number] = channel
        await channel.rpc(spec.Channel.Open(), spec.Channel.OpenOk)
        if confirms:
            await channel.confirm_select()
        if prefetch is not None:
            await channel.qos(prefetch)
        return channel

    def forget(self, channel: Channel) -> None:
        if self.channels.get(channel.number) is channel:
            del self.channels[channel.number]

    async def update_secret(self, secret: str, reason: str) -> None:
        """A new password (an OAuth 2 token) for the open connection."""
        self._update = self.loop.create_future()
        self.send_method(0, spec.Connection.UpdateSecret(new_secret=secret, reason=reason))
        await asyncio.wait([self._update, self.closed], return_when=asyncio.FIRST_COMPLETED)
        if not self._update.done():
            raise self.error or ConnectionLost("the connection closed")
        self._update.result()

    async def close(self) -> None:
        """Close cleanly (the broker's close-ok, at most CLOSE_TIMEOUT s), then the socket."""
        if self.error is not None:
            return
        if self._closing:  # another close is under way: it ends when that one does
            await asyncio.wait([self.closed], timeout=CLOSE_TIMEOUT * 2)
            return
        self._closing = True
        try:
            bye = spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
            self.send_method(0, bye)
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT)
        except (AmqpError, TimeoutError):
            pass
        self._abort(ConnectionLost("connection closed by the client", 200))
        if not self.closed.done():
            await asyncio.wait([self.closed], timeout=CLOSE_TIMEOUT)

    def _abort(self, error: AmqpError) -> None:
        if self.error is None:
            self.error = error
        if self._transport is not None:
            self._flush()  # what is queued (a close-ok, say) goes before the socket closes
            self._transport.close()
        self._ended(error)

    def _ended(self, error: AmqpError) -> None:
        if self.error is None:
            self.error = error
        error = self.error
        if not self.opened.done():
            self.opened.set_exception(error)
            self.opened.exception()  # retrieved: connect() reads it, or nobody waits any more
        if self._update is not None and not self._update.done():
            self._update.set_exception(error)
        for channel in list(self.channels.values()):
            channel.lost(error)
        callbacks, self.close_callbacks = self.close_callbacks, []
        for callback in callbacks:
            try:
                callback(self, error)
            except Exception:
                log.exception("a connection close callback failed")


async def connect(url: str, timeout: float = 60.0, name: str | None = None) -> Connection:
    """An open connection to the broker at ``url`` (amqp://user:password@host:port/vhost,
    ``?heartbeat=`` seconds, 60 by default). ConnectionLost (AuthRefused for credentials the
    broker refuses) when it cannot be had within ``timeout`` s."""
    parsed = URL(url)
    if parsed.scheme != "amqp":
        raise AmqpError(f"only amqp:// URLs are supported, not {parsed.scheme}://")
    heartbeat = int(parsed.query.get("heartbeat", "60"))
    host, port = parsed.host or "127.0.0.1", parsed.port or 5672
    loop = asyncio.get_running_loop()
    conn = Connection(parsed, heartbeat, name)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: conn, host, port)
            await asyncio.shield(conn.opened)
    except TimeoutError:
        conn._abort(ConnectionLost(f"no connection to {host}:{port} within {timeout:g} s"))
        raise conn.error or ConnectionLost("timed out") from None
    except OSError as exc:
        raise ConnectionLost(f"cannot reach the broker at {host}:{port}: {exc}") from None
    except asyncio.CancelledError:
        conn._abort(ConnectionLost("connecting was cancelled"))
        raise
    return conn
