"""A private, self-deleting queue bound to the tree's exchange, for followers of events."""

from __future__ import annotations

import collections
import contextlib
from typing import Any

import pika

from vsmd.bus.connection import CONNECTION_ERRORS, describe
from vsmd.errors import BrokerError


class Subscription:
    def __init__(self, connection: pika.BlockingConnection, exchange: str, pattern: str) -> None:
        self._conn = connection
        self._got: collections.deque[bytes] = collections.deque()
        self._ch: Any = None
        try:
            self._ch = ch = connection.channel()
            # Exclusive and auto-deleted: it goes away with this client, whatever happens.
            queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(queue, exchange, pattern)
            ch.basic_consume(queue, self._on_message, auto_ack=True)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot subscribe to {pattern}: {describe(exc)}") from None

    def _on_message(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        self._got.append(body)

    def get(self, timeout: float) -> bytes | None:
        if not self._got:
            try:
                self._conn.process_data_events(time_limit=timeout)
            except CONNECTION_ERRORS as exc:
                raise BrokerError(f"broker connection lost: {describe(exc)}") from None
        return self._got.popleft() if self._got else None

    def close(self) -> None:
        """Stop listening on a connection that stays open: closing the channel cancels the
        consumer, and the broker deletes the auto-delete queue with it."""
        self._got.clear()
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._ch is not None and self._ch.is_open:
                self._ch.close()
