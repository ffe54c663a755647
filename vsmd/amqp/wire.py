"""The frames of a publish, encoded directly: the one thing a VSM writes for every message.

pamqp builds a publish's method and content-header frames through its generic marshalling
(15.4 us for those of a state delta, its method object included, warm); these are the same
bytes from a few ``struct`` calls (5.3 us for the whole publish, its body frame included).
A message with headers or a timestamp, rare in vsmd, still goes through pamqp, whose table
and timestamp encodings these do not repeat. The unit tests compare both encoders byte for
byte over generated properties.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import constants
from pamqp import frame as pframe
from pamqp import header as pheader

FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # class basic, method publish, reserved ticket
_BASIC_ACK = struct.Struct(">BHIHHQB")  # a method frame's head, then basic.ack's fields
_FRAME_HEAD = struct.Struct(">BHI")
_EXCHANGE = constants.DOMAIN_REGEX["exchange-name"]
HEADER_HEAD = struct.Struct(">HHQH")  # class basic, weight 0, body size, property flags

# Basic's properties in the order of their flag bits (15 down), as the spec lists them; the
# kind says how each is encoded: s a short string, o an octet. Headers (a table) and timestamp
# are left to pamqp, here and in inbound.py, which reads them with this table.
PROPS: tuple[tuple[str, int, str], ...] = (
    ("content_type", 15, "s"),
    ("content_encoding", 14, "s"),
    ("delivery_mode", 12, "o"),
    ("priority", 11, "o"),
    ("correlation_id", 10, "s"),
    ("reply_to", 9, "s"),
    ("expiration", 8, "s"),
    ("message_id", 7, "s"),
    ("message_type", 5, "s"),
    ("user_id", 4, "s"),
    ("app_id", 3, "s"),
    ("cluster_id", 2, "s"),
)


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:  # pamqp raises TypeError here: a caller sees the same class
        raise TypeError(f"a short string of {len(raw)} bytes (at most 255)")
    return bytes((len(raw),)) + raw


def _frame(kind: int, number: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, number, len(payload)) + payload + FRAME_END


def method_frame(number: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    # What pamqp's Basic.Publish checks: a bad name raises here, before anything is written.
    if len(exchange) > 127 or not _EXCHANGE.fullmatch(exchange):
        raise ValueError(f"invalid exchange name {exchange[:130]!r}")
    payload = (
        _BASIC_PUBLISH
        + _shortstr(exchange)
        + _shortstr(routing_key)
        + (b"\x01" if mandatory else b"\x00")
    )
    return _frame(_METHOD, number, payload)


def header_frame(number: int, size: int, properties: Any) -> bytes:
    if properties.headers is not None or properties.timestamp is not None:
        return pframe.marshal(pheader.ContentHeader(0, size, properties), number)
    flags = 0
    parts: list[bytes] = []
    for name, bit, kind in PROPS:
        value = getattr(properties, name)
        # pamqp leaves out what is None or an empty string (cluster_id's default): so do we.
        if value is None or value == "":
            continue
        flags |= 1 << bit
        parts.append(_shortstr(value) if kind == "s" else bytes((int(value),)))
    return _frame(_HEADER, number, HEADER_HEAD.pack(60, 0, size, flags) + b"".join(parts))


def publish_frames(
    number: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: Any,
    body: bytes,
    frame_max: int,
) -> bytes:
    """Method, content header and body frames of one publish, as one buffer to write."""
    size = len(body)
    parts = [
        method_frame(number, exchange, routing_key, mandatory),
        header_frame(number, size, properties),
    ]
    room = frame_max - 8
    for at in range(0, size, room):
        parts.append(_frame(_BODY, number, body[at : at + room]))
    return b"".join(parts)


def ack_frame(number: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """Basic.Ack of a delivery: the other frame every consumed message costs."""
    return _BASIC_ACK.pack(_METHOD, number, 13, 60, 80, delivery_tag, multiple) + FRAME_END
