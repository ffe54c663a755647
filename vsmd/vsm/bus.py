"""A VSM's one broker connection, on the VSM's event loop: inbox, publishing, requests.

It speaks through vsmd's own AMQP client (vsmd/amqp/), as do vsmd/vsm/calls.py (requests and
replies on a channel of their own) and vsmd/vsm/task_queue.py (a worker's task queue on this same
connection); vsmd/vsm/edge.py says what its errors mean for a VSM.
The inbox is exclusive: it exists exactly while the VSM is connected, so a message to a VSM that
is down is returned by the broker (mandatory publish) instead of waiting in a queue nobody reads,
and its bindings go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from vsmd import amqp
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError
from vsmd.spec import VsmSpec
from vsmd.vsm.calls import REPLY_TO, Calls, Delivery, Listener, properties, unreachable
from vsmd.vsm.credentials import amqp_url, fetch_token
from vsmd.vsm.edge import LOST, describe
from vsmd.vsm.traffic import Traffic

log = logging.getLogger("vsmd.vsm")

PREFETCH = 64  # handler tasks in flight at most: a message is acked when handled
# A restarted VSM may find its old exclusive inbox still held for a moment (the broker has not
# yet seen the dead connection): declaring again is retried this long.
INBOX_LOCKED_RETRY = 10.0
# How long one connection attempt may take. A reconnect gives up soon and tries again with
# backoff. The first connection at start waits longer: a burst of a thousand spawns makes
# the broker take seconds per handshake (a 5 s limit failed 81 of 1,000 such spawns), and the
# daemon's spawn_timeout, not this, is what ends a start that takes too long.
CONNECT_TIMEOUT = 5.0
START_CONNECT_TIMEOUT = 60.0
INBOX_TAG = "inbox"  # the inbox's consumer, one per channel
RESOURCE_LOCKED = 405
SETUP_FAILED: tuple[type[BaseException], ...] = (BrokerError, *LOST)

OnMessage = Callable[[Delivery], Coroutine[Any, Any, None]]
# Handles a delivery at once, in the consumer's callback, when it can: True if it did (the bus
# then acks it), False to leave it to OnMessage's task.
TakeNow = Callable[[Delivery], bool]
Attach = Callable[[amqp.Channel], Awaitable[None]]


@dataclass
class Made:
    """A connection and its first channel, made before the VSM is known by the fork server's
    standby (vsmd/supervisor/standby.py): what a VSM opens first, the same for every VSM."""

    conn: amqp.Connection
    channel: amqp.Channel | None  # None when it could not be opened

    async def close(self) -> None:
        with contextlib.suppress(*LOST):
            await self.conn.close()


async def preconnect(url: str, timeout: float = CONNECT_TIMEOUT) -> Made | None:
    """None when the broker cannot be reached now: the VSM then connects at its start."""
    try:
        conn = await amqp.connect(url, timeout=timeout)
    except LOST:
        return None
    try:
        return Made(conn, await _first_channel(conn))
    except LOST:
        return Made(conn, None)


async def _first_channel(conn: amqp.Connection) -> amqp.Channel:
    """The inbox's channel: publisher confirms (a returned publish raises), the inbox's
    prefetch."""
    return await conn.channel(confirms=True, prefetch=PREFETCH)


class VsmBus:
    def __init__(
        self,
        spec: VsmSpec,
        topo: Topology,
        on_message: OnMessage,
        take_now: TakeNow | None = None,
    ) -> None:
        self.spec = spec
        self.topo = topo
        self.ancestors = spec.ancestors
        self._on_message = on_message
        self._take_now = take_now
        self._conn: amqp.Connection | None = None
        self._ch: amqp.Channel | None = None
        self._inbox: str | None = None  # its name, while declared and consumed
        # Direct reply-to on the confirm channel, for what must be confirmed and still wants an
        # answer (a task submitted with wait): consumed on first use.
        self._replies_on = False
        self._replies_lock = asyncio.Lock()
        self._up = False  # open() finished and close() not begun
        # Requests, replies and MCP client sessions: on a channel without confirms.
        self.calls = Calls(topo.exchange, self._connection, self._on_channel_close)
        # Consumers set up again on every open, each on a channel of its own (a worker's task
        # queue wants its own prefetch); their channels are watched as the inbox's is.
        self._attached: list[Attach] = []
        self._watched: list[amqp.Channel] = []
        self._handling: set[asyncio.Task[None]] = set()  # the inbox's deliveries in hand
        self.lost = asyncio.Event()
        # Clear while a re-parenting is under way (see move).
        self._settled = asyncio.Event()
        self._settled.set()
        # Messages in, and those this VSM sent on its own account (replies, agent messages,
        # MCP), for its rates: not its state deltas, which the rates themselves cause.
        self.traffic = Traffic()
        # Secure mode: the broker identity (user_id on every publish) and its token's life.
        self.user: str | None = None
        self.token_ttl = 0.0

    def _connection(self) -> amqp.Connection:
        if self._conn is None or self.lost.is_set():
            raise BrokerError("not connected to the broker")
        return self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self.lost.is_set()

    # --- connection ------------------------------------------------------------------------

    async def open(
        self,
        connect_timeout: float = CONNECT_TIMEOUT,
        made: Made | None = None,
        first: tuple[str, bytes] | None = None,
    ) -> None:
        """Connect, declare and bind the inbox, consume it; then publish ``first`` (routing key,
        body: the ready report), confirmed. BrokerError when it cannot.

        ``made``: a connection to this VSM's broker URL and its first channel, made ahead
        (preconnect), used as far as they are still open."""
        self.lost.clear()
        token = None
        if self.spec.token_socket:  # a fresh token for every connection
            self.user, token, self.token_ttl = await fetch_token(self.spec.token_socket)
        try:
            ch = None
            if made is not None and made.conn.is_open and token is None:
                self._conn = made.conn
                if made.channel is not None and made.channel.is_open:
                    ch = made.channel
            else:
                if made is not None:
                    await made.close()
                self._conn = await amqp.connect(
                    amqp_url(self.spec, self.user, token), timeout=connect_timeout
                )
            self._conn.close_callbacks.append(self._on_close)
            if ch is None:
                ch = await _first_channel(self._conn)
            self._ch = self._watch(ch)
            if first is not None and not self._attached and await self._open_at_once(first):
                self._up = True
                return
            await self._open_step_by_step()
            self._up = True
            if first is not None:
                await self.publish(*first)
        except SETUP_FAILED as exc:
            await self.close()
            # vsmd's own errors read as they are; the client's say what kind of failure.
            if isinstance(exc, BrokerError) and not isinstance(exc, amqp.AmqpError):
                why = exc.message
            else:
                why = describe(exc)
            raise BrokerError(f"cannot set up the inbox: {why}") from None

    async def _open_at_once(self, first: tuple[str, bytes]) -> bool:
        """The inbox's declare, binds and consume sent without waiting for their answers
        (nowait), then ``first``: one round trip to the broker instead of three (declare, four
        binds, consume and a confirmed publish took 6.3 ms so against 8.0 ms one answer at a
        time, medians of 80 on the shared broker). The broker handles a channel's methods in
        their order, so the confirm of ``first`` comes only after every step before it
        succeeded; a step it refuses closes the channel instead, and ``first`` is dropped.

        False when the broker refused a step while the connection stays up (our previous
        incarnation still holds the inbox: RESOURCE_LOCKED), for the caller to go step by
        step, with retries, on a new channel."""
        assert self._ch is not None and self._conn is not None
        name = self.topo.inbox(self.spec.vsm_id)
        try:
            await self._ch.queue_declare(name, exclusive=True, nowait=True)
            await self._bind(
                self.topo.inbox_bindings(self.spec.vsm_id, self.spec.path, self.ancestors)
            )
            await self._ch.consume(name, self._deliver, tag=INBOX_TAG, nowait=True)
            self._inbox = name
            await self.publish(*first)
        except SETUP_FAILED:
            if not self._conn.is_open:
                raise
            self._inbox = None
            self._ch = self._watch(await _first_channel(self._conn))
            return False
        return True

    async def _open_step_by_step(self) -> None:
        """Declare (retried while the inbox is locked), bind, consume: each answered."""
        self._inbox = await self._declare_inbox()
        await self._bind(self.topo.inbox_bindings(self.spec.vsm_id, self.spec.path, self.ancestors))
        # consume-ok comes after every bind above (AMQP keeps a channel's order), and a bind
        # that failed has closed the channel by then: so the inbox is bound when we are ready.
        assert self._ch is not None
        await self._ch.consume(self._inbox, self._deliver, tag=INBOX_TAG)
        for setup in self._attached:  # before ready: a spawn returns with them in place
            await self._attach(setup)

    def _deliver(self, message: amqp.Message) -> None:
        delivery = Delivery(message)
        if self._take_now is not None and self._take_now(delivery):
            delivery.ack_now()
            return
        # Each delivery handled in a task of its own, so a slow handler holds up no other;
        # the prefetch bounds how many are in hand (acked once handled).
        task = asyncio.get_running_loop().create_task(self._on_message(delivery))
        self._handling.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._handling.discard)

    async def _declare_inbox(self) -> str:
        assert self._conn is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + INBOX_LOCKED_RETRY
        delay = 0.05
        while True:
            assert self._ch is not None
            try:
                name = self.topo.inbox(self.spec.vsm_id)
                await self._ch.queue_declare(name, exclusive=True)
                return name
            except amqp.ChannelClosed as exc:
                # 405 RESOURCE_LOCKED: our previous incarnation's connection is not gone yet.
                if exc.reply_code != RESOURCE_LOCKED or loop.time() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            self._ch = self._watch(await _first_channel(self._conn))

    async def _bind(self, keys: list[str], unbind: bool = False) -> None:
        """Bind without waiting for each bind-ok: a round trip per key saved on every start."""
        assert self._ch is not None
        queue = self.topo.inbox(self.spec.vsm_id)
        for key in keys:
            if unbind:  # unbind has no nowait in AMQP
                await self._ch.queue_unbind(queue, self.topo.exchange, key)
            else:
                await self._ch.queue_bind(queue, self.topo.exchange, key, nowait=True)

    async def _open_channel(self) -> amqp.Channel:
        assert self._conn is not None
        return self._watch(await self._conn.channel(confirms=True))

    def _watch(self, ch: amqp.Channel) -> amqp.Channel:
        # A channel the broker closes (an error of ours) leaves the VSM deaf on a live
        # connection: treat it as a lost broker, so the VSM reconnects and is bound again.
        ch.close_callbacks.append(self._on_channel_close)
        return ch

    def _on_channel_close(self, channel: Any, *_args: Any) -> None:
        # Only once set up: during open() a closed channel is retried or fails open() itself.
        if self._up and (
            channel is self._ch or channel is self.calls.channel or channel in self._watched
        ):
            self._on_close()

    async def attach(self, setup: Attach) -> None:
        """Consume something more on this connection (the one a VSM may hold): ``setup`` gets
        a channel of its own now if connected, and again on every reconnect, before the
        VSM's ready report. The broker closing that channel counts as a lost connection."""
        self._attached.append(setup)
        if self._up:
            try:
                await self._attach(setup)
            except LOST as exc:
                raise BrokerError(f"cannot set up a consumer: {describe(exc)}") from None

    async def _attach(self, setup: Attach) -> None:
        ch = await self._open_channel()
        self._watched.append(ch)
        await setup(ch)

    def _on_close(self, *_args: Any) -> None:
        self.lost.set()
        self._replies_on = False
        self.calls.lost()

    async def _drop(self) -> None:
        """Give the connection up as lost: the runtime reconnects."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(*LOST):
                await conn.close()
        if not self.lost.is_set():  # a close callback may have said so already
            self._on_close()

    async def close(self) -> None:
        self._up = False
        conn, self._conn = self._conn, None
        self._ch = self._inbox = None
        self._watched = []
        self._replies_on = False
        self.calls.closed()
        if conn is not None:
            with contextlib.suppress(*LOST):
                await conn.close()

    async def refresh_token(self) -> None:
        """A new token on the open connection, before the old one expires."""
        if not self.spec.token_socket or self._conn is None:
            return
        _user, token, self.token_ttl = await fetch_token(self.spec.token_socket)
        try:
            await self._conn.update_secret(token, reason="refresh")
        except LOST as exc:
            raise BrokerError(f"cannot refresh the broker token: {describe(exc)}") from None

    async def move(self, ancestors: tuple[str, ...]) -> None:
        """Re-parented: a token whose scopes cover the new place, then its bindings.

        Until both are done, :meth:`settled` holds whoever addresses by place (the parent, the
        root): a message sent meanwhile would go to the old place and be lost, or be refused
        under the old token.
        """
        old, self.ancestors = self.ancestors, ancestors  # a reconnect binds the new place
        self._settled.clear()
        try:
            await self.refresh_token()
            await self._rebind(old, ancestors)
        except BrokerError:
            # Start over on a new connection: its token and bindings are the new place's.
            await self._drop()
            raise
        finally:
            self._settled.set()

    @property
    def is_settled(self) -> bool:
        return self._settled.is_set()

    async def settled(self) -> None:
        """Returns at once unless a re-parenting is under way; then when it is done."""
        if not self._settled.is_set():
            await self._settled.wait()

    async def _rebind(self, before: tuple[str, ...], after: tuple[str, ...]) -> None:
        """Bind the keys of the new place, drop the old ones."""
        old = set(self.topo.inbox_bindings(self.spec.vsm_id, self.spec.path, before))
        new = set(self.topo.inbox_bindings(self.spec.vsm_id, self.spec.path, after))
        if self._inbox is None:
            return  # bound anew on reconnect
        try:
            await self._bind(sorted(new - old))
            await self._bind(sorted(old - new), unbind=True)
        except LOST as exc:
            raise BrokerError(f"cannot rebind the inbox: {describe(exc)}") from None

    # --- sending ---------------------------------------------------------------------------

    async def publish(
        self,
        key: str,
        body: bytes,
        *,
        mandatory: bool = False,
        exchange: str | None = None,
        call: bool = False,
        **props: Any,
    ) -> None:
        """Publish on the tree's exchange (or ``exchange``, "" for a queue name), confirmed.

        With ``mandatory`` an address no inbox is bound to raises Unreachable. With ``call``
        it goes unconfirmed on the calls channel, and such an address fails whoever waits on
        the message's correlation id instead (vsmd/vsm/calls.py).
        """
        if self._ch is None or self.lost.is_set():
            raise BrokerError("not connected to the broker")
        if self.user is not None:
            props["user_id"] = self.user  # the broker checks it: receivers trust only this
        if call:
            await self.calls.publish(key, body, mandatory, "" if exchange == "" else None, props)
            return
        try:
            await self._ch.publish(
                body,
                "" if exchange == "" else self.topo.exchange,
                key,
                properties(**props),
                mandatory,
            )
        except amqp.PublishRefused:  # returned (no inbox bound there) or nacked
            raise unreachable(key) from None
        except LOST as exc:
            raise BrokerError(f"cannot publish: {describe(exc)}") from None

    async def publish_each(self, keys: Sequence[str], body: bytes) -> None:
        """``body`` to each of ``keys`` on the tree's exchange, confirmed. Every publish is
        written before any confirm is awaited, in the order given, with no task each: a state
        delta to the daemon and the parent left the VSM a loop turn later through two tasks
        (gather of two ``publish``), a quarter of a millisecond after it was encoded."""
        if self._ch is None or self.lost.is_set():
            raise BrokerError("not connected to the broker")
        props = properties(user_id=self.user)  # the broker checks it: receivers trust only it
        try:
            sent = [self._ch.publish_nowait(body, self.topo.exchange, k, props) for k in keys]
            # gather of futures makes no task, and reads every one's outcome
            await asyncio.gather(*(f for f in sent if f is not None))
        except amqp.PublishRefused as exc:  # not mandatory: only a nack comes here
            raise unreachable(exc.routing_key) from None
        except LOST as exc:
            raise BrokerError(f"cannot publish: {describe(exc)}") from None

    async def reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        # Not mandatory: a requester that gave up is no error of ours. Unconfirmed: it is
        # an answer, and its requester's timeout covers one that is lost.
        self.traffic.count_out()
        await self.publish(reply_to, body, exchange="", call=True, correlation_id=correlation_id)

    async def reply_confirmed(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        """A reply the broker has taken when this returns (a task's result, acked after it)."""
        self.traffic.count_out()
        await self.publish(reply_to, body, exchange="", correlation_id=correlation_id)

    async def dead_letter(self, body: bytes, reason: str) -> None:
        headers = {"x-reason": reason[:500], "x-vsm": self.spec.vsm_id}
        await self.publish(self.topo.dead_queue, body, exchange="", headers=headers)

    async def request(self, key: str, body: bytes, timeout: float, probe: bytes | None) -> Delivery:
        """Publish a request to ``key`` and wait for its reply (vsmd/vsm/calls.py)."""
        return await self.calls.request(key, body, timeout, probe, self.user)

    async def _replies(self) -> None:
        """Consume direct reply-to on the confirm channel, once per connection."""
        async with self._replies_lock:  # a second consume on the same channel would close it
            if self._replies_on:
                return
            if self._ch is None:
                raise BrokerError("not connected to the broker")
            try:
                await self._ch.consume(REPLY_TO, self.calls.on_reply, no_ack=True)
            except LOST as exc:
                raise BrokerError(f"cannot receive replies: {describe(exc)}") from None
            self._replies_on = True

    # --- the vsmd.mcp.transport.Link of this VSM's MCP client sessions ----------------------

    async def listen(
        self, correlation_id: str, listener: Listener, confirmed: bool = False
    ) -> None:
        """Answers with this correlation id go to ``listener``: those to requests published
        with ``send`` (the calls channel), or with ``confirmed`` to the confirm channel's."""
        if confirmed:
            await self._replies()
        else:
            await self.calls.open()
        self.calls.listeners[correlation_id] = listener

    def unlisten(self, correlation_id: str) -> None:
        self.calls.listeners.pop(correlation_id, None)

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        """Unconfirmed, on the calls channel: a returned message goes to the listener of its
        correlation id (``on_returned``), not to this call."""
        self.traffic.count_out()
        props: dict[str, Any] = {}
        if reply_to is not None:
            props = {"reply_to": reply_to, "correlation_id": correlation_id}
        await self.publish(key, body, mandatory=mandatory, call=True, **props)
