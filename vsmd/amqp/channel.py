"""One AMQP channel: its methods answered in order, deliveries to consumers as they are read,
publishes written at once and, on a confirming channel, settled by the broker's acks.

A channel's synchronous methods are answered in the order they were sent (AMQP keeps a
channel's order), so a FIFO of waiting futures pairs every answer with its request. A consumer
is a plain function called from the connection's ``data_received``: nothing between the socket
and the consumer waits on a queue or a task, which is where the generic clients spent most of a
message's CPU (vsmd/amqp/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands as spec
from pamqp.header import ContentHeader

from vsmd.amqp import wire
from vsmd.amqp.errors import AmqpError, ChannelClosed, PublishRefused

if TYPE_CHECKING:
    from vsmd.amqp.connection import Connection

log = logging.getLogger("vsmd.amqp")

Properties = spec.Basic.Properties
Consumer = Callable[["Message"], None]
CloseCallback = Callable[["Channel", AmqpError], None]
NO_PROPERTIES = Properties()


class Message:
    """A message delivered to a consumer, or returned by the broker."""

    __slots__ = (
        "body",
        "channel",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "properties",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        channel: Channel,
        method: spec.Basic.Deliver | spec.Basic.Return,
        properties: Properties,
        body: bytes,
    ) -> None:
        self.channel = channel
        self.body = body
        self.properties = properties
        self.exchange: str = method.exchange or ""
        self.routing_key: str = method.routing_key or ""
        if isinstance(method, spec.Basic.Deliver):
            self.delivery_tag: int | None = method.delivery_tag
            self.consumer_tag: str | None = method.consumer_tag
            self.redelivered = bool(method.redelivered)
        else:
            self.delivery_tag = self.consumer_tag = None
            self.redelivered = False

    def ack(self) -> None:
        if self.delivery_tag is not None:
            self.channel.ack(self.delivery_tag)

    def nack(self, requeue: bool = True) -> None:
        if self.delivery_tag is not None:
            self.channel.nack(self.delivery_tag, requeue)


class _Publish:
    """A confirmed publish not yet settled."""

    __slots__ = ("exchange", "future", "key", "mandatory", "returned")

    def __init__(self, future: asyncio.Future[None], exchange: str, key: str, mandatory: bool):
        self.future = future
        self.exchange = exchange
        self.key = key
        self.mandatory = mandatory
        self.returned = False


class Channel:
    def __init__(self, conn: Connection, number: int) -> None:
        self.number = number
        self._conn = conn
        self._loop = conn.loop
        self._waiting: deque[tuple[type[Any], asyncio.Future[Any]]] = deque()
        self._consumers: dict[str, Consumer] = {}
        self._tags = 0
        self.confirming = False
        self._next_publish = 1
        self._unsettled: dict[int, _Publish] = {}
        # The method, header and body parts of the message being read.
        self._method: spec.Basic.Deliver | spec.Basic.Return | None = None
        self._header: ContentHeader | None = None
        self._parts: list[bytes] = []
        self._have = 0
        self.error: AmqpError | None = None  # set once closed: why
        self._closing = False
        self.close_callbacks: list[CloseCallback] = []
        # Returned messages of an unconfirmed channel; a confirming one fails their publish.
        self.on_return: Consumer | None = None

    @property
    def is_open(self) -> bool:
        return self.error is None and not self._closing

    # --- methods -----------------------------------------------------------------------------

    async def rpc(self, method: Any, answer: type[Any] | None) -> Any:
        """Send ``method``; with ``answer``, wait for it (None: the method is nowait)."""
        self._check()
        if answer is None:
            self._conn.send_method(self.number, method)
            return None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.append((answer, fut))
        self._conn.send_method(self.number, method)
        return await fut

    async def confirm_select(self) -> None:
        await self.rpc(spec.Confirm.Select(), spec.Confirm.SelectOk)
        self.confirming = True

    async def qos(self, prefetch_count: int) -> None:
        await self.rpc(spec.Basic.Qos(prefetch_count=prefetch_count), spec.Basic.QosOk)

    async def queue_declare(
        self,
        queue: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> None:
        method = spec.Queue.Declare(
            queue=queue,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
            nowait=nowait,
        )
        await self.rpc(method, None if nowait else spec.Queue.DeclareOk)

    async def queue_bind(self, queue: str, exchange: str, key: str, nowait: bool = False) -> None:
        method = spec.Queue.Bind(queue=queue, exchange=exchange, routing_key=key, nowait=nowait)
        await self.rpc(method, None if nowait else spec.Queue.BindOk)

    async def queue_unbind(self, queue: str, exchange: str, key: str) -> None:
        method = spec.Queue.Unbind(queue=queue, exchange=exchange, routing_key=key)
        await self.rpc(method, spec.Queue.UnbindOk)

    async def consume(
        self,
        queue: str,
        consumer: Consumer,
        *,
        no_ack: bool = False,
        tag: str | None = None,
        nowait: bool = False,
    ) -> str:
        """Deliveries of ``queue`` go to ``consumer`` from now on (registered before the method
        goes out, so nowait loses none); returns the consumer tag."""
        if tag is None:
            self._tags += 1
            tag = f"c{self._tags}"
        self._consumers[tag] = consumer
        method = spec.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack, nowait=nowait)
        try:
            await self.rpc(method, None if nowait else spec.Basic.ConsumeOk)
        except BaseException:
            self._consumers.pop(tag, None)
            raise
        return tag

    async def cancel(self, tag: str) -> None:
        await self.rpc(spec.Basic.Cancel(consumer_tag=tag), spec.Basic.CancelOk)
        self._consumers.pop(tag, None)

    def ack(self, delivery_tag: int) -> None:
        self._check()
        self._conn.send_frame(wire.ack_frame(self.number, delivery_tag))

    def nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self._check()
        method = spec.Basic.Nack(delivery_tag=delivery_tag, requeue=requeue)
        self._conn.send_method(self.number, method)

    async def publish(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: Properties = NO_PROPERTIES,
        mandatory: bool = False,
    ) -> None:
        """Written at once. On a confirming channel, returns once the broker confirmed it, and
        raises PublishRefused when it returned (mandatory, nothing bound) or nacked it."""
        fut = self.publish_nowait(body, exchange, routing_key, properties, mandatory)
        if fut is not None:
            await fut
        elif self._conn.paused:
            await self._conn.drain()

    def publish_nowait(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: Properties = NO_PROPERTIES,
        mandatory: bool = False,
    ) -> asyncio.Future[None] | None:
        """Write the publish; on a confirming channel the future of its confirm."""
        self._check()
        self._conn.send_publish(self.number, exchange, routing_key, mandatory, properties, body)
        if not self.confirming:
            return None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._unsettled[self._next_publish] = _Publish(fut, exchange, routing_key, mandatory)
        self._next_publish += 1
        return fut

    async def close(self) -> None:
        if not self.is_open:
            return
        close = spec.Channel.Close(reply_code=200, reply_text="closed", class_id=0, method_id=0)
        with contextlib.suppress(AmqpError):
            await self.rpc(close, spec.Channel.CloseOk)
        self._closing = True
        self._ended(ChannelClosed("channel closed by the client", 200))

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise ChannelClosed("channel is closing", 0)

    # --- what the broker sends -------------------------------------------------------------------

    def on_method(self, frame: Any) -> None:
        if self.error is not None:  # closed by us, waiting for the broker's close-ok
            if isinstance(frame, spec.Channel.Close):  # both sides closed at once
                self._conn.send_method(self.number, spec.Channel.CloseOk())
            if isinstance(frame, spec.Channel.CloseOk | spec.Channel.Close):
                self._conn.forget(self)  # its number may be used again now
            return
        if isinstance(frame, spec.Basic.Deliver | spec.Basic.Return):
            self._method, self._header, self._parts, self._have = frame, None, [], 0
        elif isinstance(frame, spec.Basic.Ack):
            self._settle(frame.delivery_tag, frame.multiple, None)
        elif isinstance(frame, spec.Basic.Nack):
            self._settle(frame.delivery_tag, frame.multiple, False)
        elif isinstance(frame, spec.Channel.Close):
            self._conn.send_method(self.number, spec.Channel.CloseOk())
            code = frame.reply_code or 0
            text = f"{code} {frame.reply_text}"
            self._ended(ChannelClosed(f"the broker closed the channel: {text}", code))
        elif isinstance(frame, spec.Basic.Cancel):  # its queue was deleted
            # The channel closes with it: its owner hears so and sets up anew.
            why = f"the broker cancelled consumer {frame.consumer_tag} (its queue went)"
            close = spec.Channel.Close(reply_code=200, reply_text=why, class_id=0, method_id=0)
            self._conn.send_method(self.number, close)
            self._ended(ChannelClosed(why, 0), forget=False)
        elif isinstance(frame, spec.Channel.Flow):
            self._conn.send_method(self.number, spec.Channel.FlowOk(active=frame.active))
        else:
            self._answered(frame)

    def _answered(self, frame: Any) -> None:
        if not self._waiting:
            log.warning("channel %d: an answer nobody asked for: %s", self.number, frame.name)
            return
        answer, fut = self._waiting.popleft()
        if not fut.done():
            if isinstance(frame, answer):
                fut.set_result(frame)
            else:
                fut.set_exception(AmqpError(f"expected {answer.__name__}, got {frame.name}"))

    def on_header(self, header: ContentHeader) -> None:
        self._header = header
        if header.body_size == 0:
            self._complete(b"")

    def on_body(self, part: bytes) -> None:
        self._parts.append(part)
        self._have += len(part)
        if self._header is not None and self._have >= self._header.body_size:
            parts = self._parts
            self._complete(parts[0] if len(parts) == 1 else b"".join(parts))

    def _complete(self, body: bytes) -> None:
        method, header = self._method, self._header
        self._method = self._header = None
        self._parts = []
        if method is None or header is None:
            return
        message = Message(self, method, header.properties, body)
        if isinstance(method, spec.Basic.Return):
            self._on_returned(message)
            return
        consumer = self._consumers.get(method.consumer_tag or "")
        if consumer is None:
            return  # cancelled meanwhile: the broker requeues what was not acked
        try:
            consumer(message)
        except Exception:  # the reader goes on: it carries every other message
            log.exception("a consumer of channel %d failed", self.number)

    def _on_returned(self, message: Message) -> None:
        if self.confirming:
            # The return of a publish comes before its confirm: mark the oldest unsettled
            # mandatory publish to the same place (two such are routed alike anyway).
            for pending in self._unsettled.values():
                same = (pending.exchange, pending.key) == (message.exchange, message.routing_key)
                if pending.mandatory and not pending.returned and same:
                    pending.returned = True
                    return
            return
        if self.on_return is not None:
            try:
                self.on_return(message)
            except Exception:
                log.exception("handling a returned message failed")

    def _settle(self, tag: int, multiple: bool, ok: bool | None) -> None:
        tags = [t for t in self._unsettled if t <= tag] if multiple else [tag]
        for t in tags:
            pending = self._unsettled.pop(t, None)
            if pending is None or pending.future.done():
                continue
            if ok is False or pending.returned:
                what = "returned: nothing is bound to" if pending.returned else "nacked:"
                pending.future.set_exception(
                    PublishRefused(f"{what} {pending.key!r}", pending.key, pending.returned)
                )
            else:
                pending.future.set_result(None)

    def lost(self, error: AmqpError) -> None:
        """The connection went: everything waiting fails with its error."""
        self._ended(error)

    def _ended(self, error: AmqpError, forget: bool = True) -> None:
        """Closed: why is ``error``. Its number stays taken (``forget`` false) while a close
        of ours waits for the broker's close-ok."""
        if self.error is not None:
            return
        self.error = error
        if forget:
            self._conn.forget(self)
        waiting, self._waiting = self._waiting, deque()
        for _answer, fut in waiting:
            if not fut.done():
                fut.set_exception(error)
        unsettled, self._unsettled = self._unsettled, {}
        for pending in unsettled.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._consumers.clear()
        for callback in list(self.close_callbacks):
            try:
                callback(self, error)
            except Exception:
                log.exception("a close callback of channel %d failed", self.number)
