"""Request/reply over RabbitMQ's direct reply-to: no reply queue to declare or clean up."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pika
import pika.exceptions
import pika.spec

from vsmd.bus.connection import CONNECTION_ERRORS, describe
from vsmd.errors import BrokerError, NoDaemon, Timeout

REPLY_TO = "amq.rabbitmq.reply-to"


class RpcChannel:
    """Sends requests on one channel and collects replies by correlation id.

    Replies arriving for other requests wait in ``_replies`` until asked for, so several
    requests may be in flight on the same channel.
    """

    def __init__(self, connection: pika.BlockingConnection, channel: Any = None) -> None:
        self._conn = connection
        try:
            # Sharing a caller's channel saves a round trip (one VSM spawn's critical path).
            self._ch = channel if channel is not None else connection.channel()
            self._ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot open a reply channel: {describe(exc)}") from None
        self._replies: dict[str, bytes] = {}
        self._answering: set[str] = set()

    def _on_reply(
        self,
        _ch: Any,
        _method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = body

    def queue_consumers(self, queue: str) -> int | None:
        """Consumers on ``queue``, or None if it does not exist (a passive declare)."""
        ch = self._conn.channel()
        try:
            ok = ch.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return None
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"broker connection lost: {describe(exc)}") from None
        count = int(ok.method.consumer_count)
        ch.close()
        return count

    def notify(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Publish with no reply expected, ordered with this channel's requests."""
        try:
            self._ch.basic_publish(exchange, routing_key, body)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot publish: {describe(exc)}") from None

    def send(self, exchange: str, routing_key: str, body: bytes, timeout: float) -> str:
        corr = uuid.uuid4().hex
        props = pika.BasicProperties(
            reply_to=REPLY_TO,
            correlation_id=corr,
            content_type="application/json",
            # A request nobody took within the caller's patience must not run later.
            expiration=str(max(1, int(timeout * 1000))),
        )
        try:
            self._ch.basic_publish(exchange, routing_key, body, props)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot send request: {describe(exc)}") from None
        return corr

    def wait(self, corr: str, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while corr not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"no reply within {timeout:g} s")
            try:
                self._conn.process_data_events(time_limit=min(left, 0.5))
            except CONNECTION_ERRORS as exc:
                raise BrokerError(f"broker connection lost: {describe(exc)}") from None
        return self._replies.pop(corr)

    def call(self, exchange: str, routing_key: str, body: bytes, timeout: float) -> bytes:
        return self.wait(self.send(exchange, routing_key, body, timeout), timeout)

    def call_queue(self, queue: str, body: bytes, timeout: float) -> bytes:
        """Call the consumer of ``queue``; NoDaemon at once when nobody consumes it."""
        # Checked once per channel: later requests save the round trip (a daemon that goes away
        # afterwards shows as a timeout).
        if queue not in self._answering:
            if not self.queue_consumers(queue):
                raise NoDaemon(f"nobody consumes {queue}")
            self._answering.add(queue)
        return self.call("", queue, body, timeout)
