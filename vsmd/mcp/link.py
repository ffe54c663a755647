"""A broker connection of its own for MCP clients outside a VSM: vsmctl, Python users, tests.

It connects on first use and again after a loss; sessions riding on it hear of the loss
(``on_lost``) and re-open themselves on their next request.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
from yarl import URL

from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError, Unreachable
from vsmd.mcp.wire import REPLY_TO, Listener

_LOST: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class StandaloneLink:
    def __init__(self, broker_url: str, namespace: str, timeout: float = 5.0) -> None:
        self.url = broker_url
        self.topo = Topology(namespace)
        self.timeout = timeout
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._ch: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._listeners: dict[str, Listener] = {}
        self._lock = asyncio.Lock()
        # Every publish says who wrote it (the broker checks): a secure VSM trusts only that.
        self.user = URL(broker_url).user or None

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        async with self._lock:
            if self._ch is not None and not self._ch.is_closed:
                return self._ch
            await self._drop()
            try:
                conn = await aio_pika.connect(self.url, timeout=self.timeout)
                ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange = await ch.get_exchange(self.topo.exchange, ensure=False)
                queue = await ch.get_queue(REPLY_TO, ensure=False)
                await queue.consume(self._on_reply, no_ack=True)
            except _LOST as exc:
                raise BrokerError(
                    f"cannot reach the broker: {type(exc).__name__}: {str(exc)[:300]}"
                ) from None
            conn.close_callbacks.add(self._on_close)
            self._conn, self._ch = conn, ch
            return ch

    def _on_close(self, *_args: Any) -> None:
        self._ch = None
        for listener in list(self._listeners.values()):
            asyncio.get_running_loop().create_task(listener.on_lost())

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        listener = self._listeners.get(message.correlation_id or "")
        if listener is not None:
            await listener.on_message(message.body)

    async def listen(self, correlation_id: str, listener: Listener) -> None:
        await self._channel()
        self._listeners[correlation_id] = listener

    def unlisten(self, correlation_id: str) -> None:
        self._listeners.pop(correlation_id, None)

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        await self._channel()
        assert self._exchange is not None
        message = aio_pika.Message(
            body,
            content_type="application/json",
            reply_to=reply_to,
            correlation_id=correlation_id,
            user_id=self.user,
        )
        try:
            await self._exchange.publish(message, key, mandatory=mandatory)
        except aio_pika.exceptions.DeliveryError:
            raise Unreachable(f"no VSM at {key.split('.', 1)[-1]!r}: unknown or down") from None
        except _LOST as exc:
            raise BrokerError(f"cannot publish: {type(exc).__name__}: {str(exc)[:300]}") from None

    async def _drop(self) -> None:
        conn, self._conn, self._ch, self._exchange = self._conn, None, None, None
        if conn is not None:
            conn.close_callbacks.discard(self._on_close)
            with contextlib.suppress(*_LOST, RuntimeError):
                await conn.close()

    async def close(self) -> None:
        self._listeners.clear()
        await self._drop()
