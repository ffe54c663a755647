"""The AMQP 0-9-1 client of a VSM: one asyncio protocol per connection, frames parsed and
dispatched as they are read, publishes written at once; pamqp for the frames' encoding, but for
the frames every message brings (wire.py writes them, inbound.py reads them).

Why not aio-pika/aiormq here: between the socket and a consumer they pass every frame through
a reader task, a channel's queue and its task, and a task per delivery, and every write through
a writer task. Measured side by side on this project's machine, request/reply between two
processes (direct reply-to, no confirms), medians of 2,000: aiormq 0.64-0.70 ms and 0.21 CPU ms
per side a round trip; aio-pika 0.77-0.88 ms and 0.28-0.31; a bare protocol of this kind
0.44-0.51 ms and 0.09-0.11. The daemon and ``VsmClient`` stay on aio-pika (vsmd/bus/), where a
message's cost matters less than its robust reconnection.

What it does: PLAIN login, heartbeats, channels with publisher confirms and mandatory returns,
queue declare/bind/unbind, consumers with or without acks, qos, update-secret (OAuth 2 tokens),
the broker's flow control and close. What it leaves out: TLS, other SASL mechanisms, basic.get,
transactions, exchange methods (a VSM declares none).
"""

from vsmd.amqp.channel import Channel, Message, Properties
from vsmd.amqp.connection import Connection, connect
from vsmd.amqp.errors import AmqpError, AuthRefused, ChannelClosed, ConnectionLost, PublishRefused

__all__ = [
    "AmqpError",
    "AuthRefused",
    "Channel",
    "ChannelClosed",
    "Connection",
    "ConnectionLost",
    "Message",
    "Properties",
    "PublishRefused",
    "connect",
]
