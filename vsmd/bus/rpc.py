"""Request/reply over RabbitMQ's direct reply-to: no reply queue to declare or clean up."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pika
import pika.exceptions
import pika.spec

from vsmd.bus.connection import CONNECTION_ERRORS, describe, login_of
from vsmd.errors import BrokerError, NoDaemon, Timeout, Unreachable

REPLY_TO = "amq.rabbitmq.reply-to"
PROBE_EVERY = 1.0  # a request with a probe checks this often that its receiver is still there
_PROBE = ".probe"  # suffix of a probe's correlation id


Probe = tuple[str, str, bytes]


class RpcChannel:
    """Sends requests on one channel and collects replies by correlation id.

    Replies arriving for other requests wait in ``_replies`` until asked for, so several
    requests may be in flight on the same channel.
    """

    def __init__(self, connection: pika.BlockingConnection, channel: Any = None) -> None:
        self._conn = connection
        self._user = login_of(connection)
        try:
            # Sharing a caller's channel saves a round trip (one VSM spawn's critical path).
            self._ch = channel if channel is not None else connection.channel()
            self._ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
            self._ch.add_on_return_callback(self._on_return)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot open a reply channel: {describe(exc)}") from None
        self._replies: dict[str, bytes] = {}
        self._answering: set[str] = set()
        # Requests (and probes) the broker returned as unroutable, by correlation id.
        self._returned: dict[str, Unreachable] = {}

    def _on_reply(
        self,
        _ch: Any,
        _method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = body

    def _on_return(
        self,
        _ch: Any,
        method: pika.spec.Basic.Return,
        props: pika.spec.BasicProperties,
        _body: bytes,
    ) -> None:
        corr = props.correlation_id or ""
        key = method.routing_key
        if corr.endswith(_PROBE):
            self._returned[corr.removesuffix(_PROBE)] = Unreachable(
                f"the receiver at {key!r} went away before it answered", key=key, taken=True
            )
        elif corr:
            self._returned[corr] = Unreachable(f"nothing is bound to {key!r}", key=key, taken=False)

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

    def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        timeout: float,
        mandatory: bool = False,
    ) -> str:
        """Publish a request; with ``mandatory`` an unroutable one makes ``wait`` raise
        Unreachable (the broker returns it on this channel)."""
        corr = uuid.uuid4().hex
        props = pika.BasicProperties(
            user_id=self._user,
            reply_to=REPLY_TO,
            correlation_id=corr,
            content_type="application/json",
            # A request nobody took within the caller's patience must not run later.
            expiration=str(max(1, int(timeout * 1000))),
        )
        try:
            self._ch.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot send request: {describe(exc)}") from None
        return corr

    def wait(self, corr: str, timeout: float, probe: Probe | None = None) -> bytes:
        """The reply to ``corr``. With a ``probe`` (exchange, key, body), that is published
        mandatory every PROBE_EVERY s, so a receiver that goes down after it took the request
        gives Unreachable instead of a wait for the whole timeout."""
        deadline = time.monotonic() + timeout
        next_probe = time.monotonic() + PROBE_EVERY
        try:
            while corr not in self._replies:
                if corr in self._returned:
                    raise self._returned[corr]
                now = time.monotonic()
                if now >= deadline:
                    raise Timeout(f"no reply within {timeout:g} s")
                if probe is not None and now >= next_probe:
                    self._probe(corr, probe)
                    next_probe = now + PROBE_EVERY
                try:
                    self._conn.process_data_events(time_limit=min(deadline - now, 0.5))
                except CONNECTION_ERRORS as exc:
                    raise BrokerError(f"broker connection lost: {describe(exc)}") from None
            return self._replies.pop(corr)
        finally:
            self._returned.pop(corr, None)

    def _probe(self, corr: str, probe: Probe) -> None:
        exchange, key, body = probe
        props = pika.BasicProperties(
            user_id=self._user,
            correlation_id=corr + _PROBE,
            content_type="application/json",
            expiration=str(int(PROBE_EVERY * 1000)),  # never piles up behind a busy receiver
        )
        try:
            self._ch.basic_publish(exchange, key, body, props, mandatory=True)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot send a probe: {describe(exc)}") from None

    def call(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        timeout: float,
        probe: bytes | None = None,
    ) -> bytes:
        """Request and reply. With ``probe`` (a message its receiver ignores) the request is
        mandatory and the receiver is probed while we wait: Unreachable when nobody is bound to
        ``routing_key`` (details ``taken=False``) or the receiver goes away before it answers
        (``taken=True``: it may have acted on the request)."""
        mandatory = probe is not None
        corr = self.send(exchange, routing_key, body, timeout, mandatory)
        return self.wait(corr, timeout, (exchange, routing_key, probe) if probe else None)

    def call_queue(self, queue: str, body: bytes, timeout: float) -> bytes:
        """Call the consumer of ``queue``; NoDaemon at once when nobody consumes it."""
        # Checked once per channel: later requests save the round trip (a daemon that goes away
        # afterwards shows as a timeout).
        if queue not in self._answering:
            if not self.queue_consumers(queue):
                raise NoDaemon(f"nobody consumes {queue}")
            self._answering.add(queue)
        return self.call("", queue, body, timeout)
