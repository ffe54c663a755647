"""A VSM's requests, replies and MCP client traffic: a channel of their own, without confirms.

Publisher confirms cost a requester more than anything else in a round trip (measured with a
bare aio-pika pair: 0.79 against 0.55 client CPU ms per call, and a quarter more latency). A
request needs none of what a confirm gives: its reply says that it arrived, its timeout that it
did not, and an address nobody is bound to comes back from the broker (``basic.return`` of the
mandatory publish) as fast as a confirm would have, here to :meth:`Calls.on_returned`. So
requests, replies and the MCP sessions of this VSM go on this channel, and everything whose
sender must know the broker took it (``ctx.send``, state, tasks) stays on the confirm channel.

The broker's direct reply-to sends an answer to the channel that published the request, so
this channel consumes it, opened on first use: a VSM that never calls costs nothing.

Its messages go through vsmd's own AMQP client (vsmd/amqp/): a reply is handed to its waiting
request from the socket's read, with no task in between. A returned request (nothing bound to
its key) comes to :meth:`Calls.on_returned` from the channel's ``on_return``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from vsmd import amqp
from vsmd.errors import BrokerError, Timeout, Unreachable
from vsmd.vsm.edge import LOST, describe

if TYPE_CHECKING:
    from vsmd.protocol import Envelope

log = logging.getLogger("vsmd.vsm")

REPLY_TO = "amq.rabbitmq.reply-to"
PROBE_EVERY = 1.0  # a pending request checks this often that its target still has an inbox


class Delivery:
    """A message received, with what the runtime reads of it, and its ack."""

    __slots__ = (
        "_ack",
        "body",
        "correlation_id",
        "env",
        "exchange",
        "reply_to",
        "routing_key",
        "user_id",
    )

    def __init__(self, message: amqp.Message, acked: bool = False) -> None:
        props = message.properties
        self.body: bytes = message.body
        self.reply_to: str | None = props.reply_to
        self.correlation_id: str | None = props.correlation_id
        self.user_id: str | None = props.user_id
        self.exchange: str | None = message.exchange
        self.routing_key: str | None = message.routing_key
        self._ack = None if acked else message
        self.env: Envelope | None = None  # decoded already, where the runtime looked at it

    async def ack(self) -> None:
        self.ack_now()

    def ack_now(self) -> None:
        if self._ack is not None:
            self._ack.ack()


def properties(
    reply_to: str | None = None,
    correlation_id: str | None = None,
    expiration: float | None = None,
    user_id: str | None = None,
    headers: dict[str, Any] | None = None,
    delivery_mode: int = 1,
) -> amqp.Properties:
    """What a VSM's publish carries (expiration in seconds, as aio-pika takes it): built
    directly, since aio-pika's Message took 15 µs a message against 1 µs for these."""
    return amqp.Properties(
        content_type="application/json",
        delivery_mode=int(delivery_mode),
        reply_to=reply_to,
        correlation_id=correlation_id,
        expiration=None if expiration is None else str(max(int(expiration * 1000), 1)),
        user_id=user_id,
        headers=headers,
    )


class Listener(Protocol):
    """Answers for one correlation id that stays (vsmd.mcp.wire.Listener)."""

    async def on_message(self, body: bytes) -> None: ...

    async def on_lost(self) -> None: ...

    async def on_returned(self, error: Unreachable) -> None: ...


def unreachable(key: str) -> Unreachable:
    """The error of a mandatory publish to ``key`` that no inbox took."""
    if key.startswith("up."):  # our key to the daemon: no daemon queue is bound
        return Unreachable("vsmd is not on the broker: restarting or reconnecting")
    return Unreachable(f"no VSM at {key.split('.', 1)[-1]!r}: unknown or down")


class Calls:
    """The waiting requests and listeners of one VSM, and the channel their traffic uses."""

    def __init__(
        self,
        exchange: str,
        connection: Callable[[], amqp.Connection],
        on_close: Callable[..., None],
    ) -> None:
        self.exchange = exchange  # the tree's
        self._connection = connection  # the VSM's live one, or BrokerError
        # Told when the broker closes the channel (an error of ours): the VSM then reconnects,
        # as it does for its inbox's channel, instead of calling on a dead channel.
        self._on_close = on_close
        self.channel: amqp.Channel | None = None
        self.pending: dict[str, asyncio.Future[Delivery]] = {}
        self.listeners: dict[str, Listener] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """The channel, consuming direct reply-to; once per connection. Requests made at once
        all come here first: a second consume of reply-to on one channel would close it."""
        async with self._lock:
            if self.channel is not None:
                return
            conn = self._connection()
            try:
                ch = await conn.channel()
                ch.on_return = self.on_returned
                await ch.consume(REPLY_TO, self.on_reply, no_ack=True)
            except LOST as exc:
                raise BrokerError(f"cannot receive replies: {describe(exc)}") from None
            self.channel = ch
            ch.close_callbacks.append(self._on_close)

    async def publish(
        self, key: str, body: bytes, mandatory: bool, exchange: str | None, props: dict[str, Any]
    ) -> None:
        """On the tree's exchange (or ``exchange``, "" for a queue name), unconfirmed."""
        if self.channel is None:
            await self.open()
        assert self.channel is not None
        try:
            where = self.exchange if exchange is None else exchange
            # Unconfirmed: returns at once, unless the socket's buffer is full (back-pressure).
            await self.channel.publish(body, where, key, properties(**props), mandatory)
        except LOST as exc:
            raise BrokerError(f"cannot publish: {describe(exc)}") from None

    async def request(
        self, key: str, body: bytes, timeout: float, probe: bytes | None, user: str | None
    ) -> Delivery:
        """Publish a request to ``key`` and wait for its reply.

        Unreachable when nothing is bound to ``key`` or the target's inbox goes away while we
        wait (checked every PROBE_EVERY s with a ``probe`` that its receiver ignores; the
        broker returns the probe, under the request's correlation id, when the inbox is gone).
        """
        loop = asyncio.get_running_loop()
        corr = uuid.uuid4().hex
        fut: asyncio.Future[Delivery] = loop.create_future()
        self.pending[corr] = fut
        deadline = loop.time() + timeout
        expiration = max(timeout, 0.001)
        props = {"reply_to": REPLY_TO, "correlation_id": corr, "expiration": expiration}
        probed = False
        try:
            await self.publish(key, body, True, None, {**props, "user_id": user})
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise Timeout(f"no answer from {key.split('.', 1)[-1]!r} within {timeout:g} s")
                every = PROBE_EVERY if probe is not None else left
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(left, every))
                except TimeoutError:
                    pass
                except Unreachable:
                    if not probed:
                        raise
                    raise Unreachable(
                        f"{key.split('.', 1)[-1]!r} went down before it answered"
                    ) from None
                if probe is not None:
                    probed = True
                    again = {"correlation_id": corr, "expiration": PROBE_EVERY, "user_id": user}
                    await self.publish(key, probe, True, None, again)
        finally:
            self.pending.pop(corr, None)

    def closed(self) -> None:
        """The connection or this channel went: a new one is opened on next use."""
        self.channel = None

    def lost(self) -> None:
        """Fail everything that waits: its answer cannot come on a connection that is gone."""
        self.closed()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(BrokerError("lost the broker before the answer came"))
        for listener in list(self.listeners.values()):
            self._spawn(listener.on_lost())

    def on_reply(self, raw: amqp.Message) -> None:
        message = Delivery(raw, acked=True)
        corr = message.correlation_id or ""
        fut = self.pending.get(corr)
        if fut is not None and not fut.done():
            fut.set_result(message)
            return
        listener = self.listeners.get(corr)
        if listener is not None:
            self._spawn(listener.on_message(message.body))

    def on_returned(self, message: amqp.Message) -> None:
        """A mandatory publish no inbox took: fail whoever waits on its correlation id."""
        corr = message.properties.correlation_id or ""
        error = unreachable(message.routing_key)
        fut = self.pending.get(corr)
        if fut is not None:
            if not fut.done():
                fut.set_exception(error)
            return
        listener = self.listeners.get(corr)
        if listener is not None:
            self._spawn(listener.on_returned(error))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)
