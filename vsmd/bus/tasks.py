"""Submitting tasks to a worker's queue from outside the tree (vsmctl, VsmClient's users).

A task goes through the default exchange straight to ``<ns>.tasks.<id>``: persistent,
mandatory (no such queue comes back at once) and confirmed (it is on the broker when
``publish`` returns). Results come back by direct reply-to, which must be consumed on the
channel that publishes: one channel does both.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pika
import pika.exceptions
import pika.spec

from vsmd.bus.connection import CONNECTION_ERRORS, describe, login_of
from vsmd.bus.rpc import REPLY_TO
from vsmd.errors import BrokerError, Timeout, Unreachable

PERSISTENT = 2  # AMQP delivery mode: written to disk on a durable queue


class TaskChannel:
    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._conn = connection
        self._user = login_of(connection)
        self._ch: Any = None
        self._replies: dict[str, bytes] = {}

    def _channel(self) -> Any:
        if self._ch is None or not self._ch.is_open:
            try:
                ch = self._conn.channel()
                ch.confirm_delivery()
                ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
            except CONNECTION_ERRORS as exc:
                raise BrokerError(f"cannot open a task channel: {describe(exc)}") from None
            self._ch = ch
        return self._ch

    def _on_reply(
        self,
        _ch: Any,
        _method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = body

    def publish(self, queue: str, body: bytes, reply: bool) -> str:
        """Put ``body`` on ``queue``; returns the correlation id its result will carry.

        Unreachable when no such queue exists; BrokerError when the broker did not take it.
        """
        ch = self._channel()
        corr = uuid.uuid4().hex
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            user_id=self._user,
            reply_to=REPLY_TO if reply else None,
            correlation_id=corr if reply else None,
        )
        try:
            ch.basic_publish("", queue, body, props, mandatory=True)
        except pika.exceptions.UnroutableError:
            raise Unreachable(f"no queue {queue!r}", key=queue, taken=False) from None
        except pika.exceptions.NackError:
            raise BrokerError(f"the broker did not take the task for {queue!r}") from None
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot publish: {describe(exc)}") from None
        return corr

    def wait(self, corr: str, timeout: float) -> bytes:
        """The reply with ``corr``; Timeout after ``timeout`` seconds (the task stays queued).

        No probe as requests to inboxes have: the queue outlives its worker's processes, and a
        restarted worker runs the task again and answers this same channel."""
        deadline = time.monotonic() + timeout
        while corr not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"no result within {timeout:g} s; the task stays queued")
            try:
                self._conn.process_data_events(time_limit=min(left, 0.5))
            except CONNECTION_ERRORS as exc:
                raise BrokerError(f"broker connection lost: {describe(exc)}") from None
        return self._replies.pop(corr)
