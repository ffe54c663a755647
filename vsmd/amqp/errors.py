"""What the VSM's AMQP client raises: all of it BrokerError, so vsmd's one exception tree holds
it and a caller that only knows "the broker failed" catches it."""

from __future__ import annotations

from vsmd.errors import BrokerError


class AmqpError(BrokerError):
    """Anything the broker connection or a channel could not do."""


class ConnectionLost(AmqpError):
    """The connection is closed, by the broker, the network or ourselves."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.reply_code = code


class AuthRefused(ConnectionLost):
    """The broker refused the credentials (403 ACCESS_REFUSED at the handshake)."""


class ChannelClosed(AmqpError):
    """The channel is closed; ``reply_code`` is the broker's (405 RESOURCE_LOCKED, 404 …) or 0
    when the connection went with it."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.reply_code = code


class PublishRefused(AmqpError):
    """A confirmed publish that the broker returned (mandatory, no queue bound to its key) or
    nacked."""

    def __init__(self, message: str, routing_key: str, returned: bool) -> None:
        super().__init__(message)
        self.routing_key = routing_key
        self.returned = returned
