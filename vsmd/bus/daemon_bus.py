"""The daemon's one connection: admin queue, the tree's exchange, and the daemon's own queue."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
import pika.spec

from vsmd.bus.connection import (
    CONNECTION_ERRORS,
    close_quietly,
    connect,
    describe,
    login_of,
    redact,
)
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError

BROKER_EVENTS = "amq.rabbitmq.event"
HELD_REPLIES = 10_000  # answers kept while the connection is down, for after the reconnect
log = logging.getLogger("vsmd.bus")

AdminHandler = Callable[[pika.spec.BasicProperties, bytes], None]
EventHandler = Callable[[str, pika.spec.BasicProperties, bytes], None]
ReturnHandler = Callable[[str], None]  # the correlation id of a message the broker returned


class DaemonBus:
    """Owned by the daemon's loop thread; only :meth:`wake` may be called from other threads."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        heartbeat: int,
        on_admin: AdminHandler,
        on_event: EventHandler,
        on_return: ReturnHandler | None = None,
    ) -> None:
        self.url = url
        self.topo = topology
        self.heartbeat = heartbeat
        self._on_admin = on_admin
        self._on_event = on_event
        self._on_return = on_return
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._user: str | None = None
        self._held: deque[tuple[str, bytes, str | None]] = deque(maxlen=HELD_REPLIES)
        # (routing key, headers) of each broker event; None: no broker events consumed.
        self.on_broker_event: Callable[[str, dict[str, Any]], None] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        conn = connect(self.url, self.heartbeat)
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=256)
            ch.exchange_declare(self.topo.exchange, exchange_type="topic", durable=True)
            ch.queue_declare(self.topo.admin_queue, durable=True)
            ch.queue_declare(self.topo.daemon_queue, arguments={"x-expires": 600_000})
            ch.queue_bind(self.topo.daemon_queue, self.topo.exchange, "up.#")
            ch.queue_bind(self.topo.daemon_queue, self.topo.exchange, "alg.#")  # every alert
            # Bounded: a flood of bad messages must not fill the broker's memory.
            ch.queue_declare(
                self.topo.dead_queue,
                durable=True,
                arguments={"x-max-length": 10_000, "x-overflow": "drop-head"},
            )
            ch.basic_consume(self.topo.admin_queue, self._admin_cb)
            ch.basic_consume(self.topo.daemon_queue, self._event_cb, auto_ack=True)
            if self.on_broker_event is not None:
                # The broker's own events (rabbitmq_event_exchange, on a secure node): who
                # opens and closes connections, for the per-VSM connection cap.
                events = ch.queue_declare("", exclusive=True).method.queue
                for key in ("connection.created", "connection.closed"):
                    ch.queue_bind(events, BROKER_EVENTS, key)
                ch.basic_consume(events, self._broker_event_cb, auto_ack=True)
            ch.add_on_return_callback(self._return_cb)
        except CONNECTION_ERRORS as exc:
            close_quietly(conn)
            raise BrokerError(
                f"cannot set up topology on {redact(self.url)}: {describe(exc)}"
            ) from None
        self._conn, self._ch = conn, ch
        self._user = login_of(conn)
        log.info("connected to %s, namespace %s", redact(self.url), self.topo.namespace)
        self._send_held()

    # The handlers are called inside pika's process_data_events: an exception of theirs would
    # come out of pump() looking like a lost connection (OSError is one of CONNECTION_ERRORS).
    def _admin_cb(
        self, ch: Any, method: Any, props: pika.spec.BasicProperties, body: bytes
    ) -> None:
        # Ack first: the request is ours now; a failure inside is answered, never redelivered
        # into a loop of the same failure.
        ch.basic_ack(method.delivery_tag)
        try:
            self._on_admin(props, body)
        except Exception:
            log.exception("internal error in the admin request handler")

    def _broker_event_cb(
        self, _ch: Any, method: Any, props: pika.spec.BasicProperties, _body: bytes
    ) -> None:
        assert self.on_broker_event is not None
        try:
            self.on_broker_event(method.routing_key, dict(props.headers or {}))
        except Exception:
            log.exception("internal error in the broker event handler")

    def _event_cb(
        self, _ch: Any, method: Any, props: pika.spec.BasicProperties, body: bytes
    ) -> None:
        try:
            self._on_event(method.routing_key, props, body)
        except Exception:
            log.exception(
                "internal error in the handler of a message on %s", method.routing_key[:200]
            )

    def _return_cb(
        self, _ch: Any, _method: Any, props: pika.spec.BasicProperties, _body: bytes
    ) -> None:
        if self._on_return is None:
            return
        try:
            self._on_return(props.correlation_id or "")
        except Exception:
            log.exception("internal error in the handler of a returned message")

    def _lost(self, exc: BaseException) -> BrokerError:
        close_quietly(self._conn)
        self._conn, self._ch = None, None
        return BrokerError(f"lost the broker: {describe(exc)}")

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for deliveries or a wake-up and dispatch them."""
        if self._conn is None:
            raise BrokerError("not connected")
        try:
            # The callbacks keep their handlers' exceptions, so what arrives here (OSError
            # included) comes from the connection itself.
            self._conn.process_data_events(time_limit=timeout)
        except CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None

    def wake(self) -> None:
        """Make a blocked :meth:`pump` return now (thread-safe)."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)

    def reply(self, props: pika.spec.BasicProperties, body: bytes) -> None:
        """Answer a request; without a connection the answer is held until the reconnect
        (the caller's channel outlives a blip of ours, and its request was acked already)."""
        if not props.reply_to:
            return
        if self._ch is not None:
            try:
                self.publish("", props.reply_to, body, props.correlation_id)
                return
            except BrokerError as err:
                log.warning("%s; the reply waits for the reconnect", err.message)
        if len(self._held) == self._held.maxlen:
            log.warning("%d replies wait for the broker: dropping the oldest", len(self._held))
        self._held.append((props.reply_to, body, props.correlation_id))

    def _send_held(self) -> None:
        """The replies held while we were away, oldest first (BrokerError if lost again)."""
        while self._held:
            to, body, corr = self._held[0]
            self.publish("", to, body, corr)
            self._held.popleft()

    def publish(
        self,
        exchange: str,
        key: str,
        body: bytes,
        correlation_id: str | None = None,
        mandatory: bool = False,
        expiration: str | None = None,
    ) -> None:
        """Publish (no confirm); with ``mandatory`` an unroutable message comes back to
        ``on_return`` with its correlation id."""
        if self._ch is None:
            log.warning("dropping a message to %s: no broker connection", key)
            return
        try:
            self._ch.basic_publish(
                exchange,
                key,
                body,
                pika.BasicProperties(
                    user_id=self._user,
                    correlation_id=correlation_id,
                    content_type="application/json",
                    expiration=expiration,
                ),
                mandatory=mandatory,
            )
        except CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None

    def delete_queue(self, queue: str) -> None:
        if self._conn is None:
            return  # x-expires removes it once the broker is back and nobody uses it
        try:
            # A channel of its own: a refused delete closes it, not the one we consume on.
            ch = self._conn.channel()
            ch.queue_delete(queue)
            ch.close()
        except pika.exceptions.ChannelClosed as exc:
            raise BrokerError(f"cannot delete {queue}: {describe(exc)}") from None
        except CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None

    def leave(self) -> None:
        """Close at a stop, removing first what a restart does not need (docs/protocol.md,
        "What stays on the broker"): the daemon queue, and the exchange unless something is
        still bound to it (an event follower, which then keeps its binding for the next
        start). The admin and dead-letter queues stay."""
        if self._conn is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                # A channel of its own: a refused delete closes it, not the one we consume on.
                ch = self._conn.channel()
                ch.queue_delete(self.topo.daemon_queue)
                ch.exchange_delete(self.topo.exchange, if_unused=True)
        self.close()

    def close(self) -> None:
        close_quietly(self._conn)
        self._conn, self._ch = None, None
