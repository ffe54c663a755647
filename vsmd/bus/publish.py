"""Publishing that the sender can trust: publisher confirms, and mandatory where it matters.

A VSM's inbox is exclusive, so it exists exactly while the VSM is up. A mandatory publish to a
key no inbox is bound to comes back from the broker (``basic.return``) before the confirm, and
pika's BlockingChannel raises UnroutableError from ``basic_publish``: the sender learns at once
that nobody is there, instead of the message being dropped without a word.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions

from vsmd.bus.connection import CONNECTION_ERRORS, describe, login_of
from vsmd.errors import BrokerError, Unreachable


class ConfirmedPublisher:
    """A channel of its own in confirm mode (a confirm channel cannot go back to plain mode,
    so the caller's request/reply channel is left as it is)."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._conn = connection
        self._ch: Any = None

    def _channel(self) -> Any:
        # A channel the broker closed (e.g. 404 for a missing exchange) is replaced.
        if self._ch is None or not self._ch.is_open:
            try:
                ch = self._conn.channel()
                ch.confirm_delivery()
            except CONNECTION_ERRORS as exc:
                raise BrokerError(f"cannot open a publishing channel: {describe(exc)}") from None
            self._ch = ch
        return self._ch

    def publish(self, exchange: str, routing_key: str, body: bytes, mandatory: bool = True) -> None:
        """Return once the broker has taken the message.

        Unreachable if ``mandatory`` and no queue is bound to ``routing_key``; BrokerError if
        the broker refused the message or the connection is gone.
        """
        ch = self._channel()
        props = pika.BasicProperties(content_type="application/json", user_id=login_of(self._conn))
        try:
            ch.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
        except pika.exceptions.UnroutableError:
            raise Unreachable(
                f"nothing is bound to {routing_key!r}", key=routing_key, taken=False
            ) from None
        except pika.exceptions.NackError:
            raise BrokerError(f"the broker did not take the message to {routing_key!r}") from None
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"cannot publish: {describe(exc)}") from None
