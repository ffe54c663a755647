"""The frames a VSM reads for every message, decoded directly: a delivery's method and content
header, and a publisher confirm.

pamqp decodes a frame by walking its class's attribute list and dispatching on each field's type
name; for a delivery and its header that walk was a tenth of a VSM's CPU while it answered
requests (py-spy, both sides of a request/reply pair). These read the same fields with a few
``struct`` calls into the same pamqp objects, so nothing after the decode changes. A header
with the properties vsmd never sends (headers, a timestamp, a second flag word) is left to
pamqp, whose table and timestamp decodings these do not repeat. The unit tests decode frames
pamqp encoded, over generated fields, with both.
"""

from __future__ import annotations

import struct

from pamqp import commands as spec
from pamqp.header import ContentHeader

from vsmd.amqp import wire

DELIVER = b"\x00\x3c\x00\x3c"  # class basic (60), method deliver (60)
ACK = b"\x00\x3c\x00\x50"  # class basic, method ack (80)
_TAG_BIT = struct.Struct(">qB")  # a delivery tag (pamqp reads it signed) and a bit octet
# A header with any of these flags goes to pamqp: headers (a table), timestamp, and bit 0,
# which says another flag word follows.
_PAMQP_FLAGS = 0x2000 | 0x0040 | 0x0001
# wire.PROPS as this reads it: each property's flag mask, and whether it is an octet.
_PROPS = tuple((name, 1 << bit, kind == "o") for name, bit, kind in wire.PROPS)
_ALL_PROPS = tuple(spec.Basic.Properties.__slots__)


# Each takes a whole frame as read (7 bytes of frame header, the payload, the end marker).
PAYLOAD = 7
_END = 1  # the frame-end octet after the payload


def _shortstr(frame: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + frame[pos]
    if end > len(frame) - _END:
        raise ValueError("a short string runs past the end of its frame")
    return frame[pos + 1 : end].decode(), end


def _tag_bit(frame: bytes, pos: int) -> tuple[int, bool]:
    if pos + _TAG_BIT.size > len(frame) - _END:
        raise ValueError("a delivery tag runs past the end of its frame")
    tag, bits = _TAG_BIT.unpack_from(frame, pos)
    return tag, bool(bits & 1)


def method_id(frame: bytes) -> bytes:
    """A method frame's class and method ids, as DELIVER and ACK spell them."""
    return frame[PAYLOAD : PAYLOAD + 4]


def deliver(frame: bytes) -> spec.Basic.Deliver:
    """Basic.Deliver from its method frame. ValueError for a frame that does not hold one."""
    try:
        tag, pos = _shortstr(frame, PAYLOAD + 4)
        delivery_tag, redelivered = _tag_bit(frame, pos)
        exchange, pos = _shortstr(frame, pos + _TAG_BIT.size)
        routing_key, pos = _shortstr(frame, pos)
    except (struct.error, IndexError) as exc:
        raise ValueError(f"a truncated Basic.Deliver: {exc}") from None
    # Not through __init__, whose validation pamqp's own decoding skips as well.
    method = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
    method.consumer_tag = tag
    method.delivery_tag = delivery_tag
    method.redelivered = redelivered
    method.exchange = exchange
    method.routing_key = routing_key
    return method


def ack(frame: bytes) -> spec.Basic.Ack:
    """Basic.Ack (a publisher confirm) from its method frame."""
    delivery_tag, multiple = _tag_bit(frame, PAYLOAD + 4)
    return spec.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple)


def header(frame: bytes) -> ContentHeader | None:
    """The content header of a basic message from its frame; None when its properties need
    pamqp (headers, a timestamp, more than one flag word)."""
    if len(frame) - _END < PAYLOAD + wire.HEADER_HEAD.size:
        raise ValueError("a content header shorter than its fixed fields")
    try:
        class_id, weight, size, flags = wire.HEADER_HEAD.unpack_from(frame, PAYLOAD)
        if flags & _PAMQP_FLAGS:
            return None
        props = spec.Basic.Properties.__new__(spec.Basic.Properties)
        for name in _ALL_PROPS:
            setattr(props, name, None)
        props.cluster_id = ""  # pamqp's default, where the flag is not set
        pos = PAYLOAD + wire.HEADER_HEAD.size
        for name, bit, octet in _PROPS:
            if flags & bit:
                if octet:
                    if pos >= len(frame) - _END:
                        raise ValueError("a property runs past the end of its frame")
                    setattr(props, name, frame[pos])
                    pos += 1
                else:
                    value, pos = _shortstr(frame, pos)
                    setattr(props, name, value)
    except (struct.error, IndexError) as exc:
        raise ValueError(f"a truncated content header: {exc}") from None
    out = ContentHeader.__new__(ContentHeader)
    out.class_id, out.weight, out.body_size, out.properties = class_id, weight, size, props
    return out
