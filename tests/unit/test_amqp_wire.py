"""vsmd's own encoding of a publish against pamqp's, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp import header as pheader

from tests.support.amqp_frames import basic_properties, shortstr
from vsmd.amqp import wire

exchange = st.from_regex(r"[a-zA-Z0-9_.:\-]{0,40}", fullmatch=True)
properties = basic_properties(tables=True)


def pamqp_publish(
    number: int, ex: str, key: str, mandatory: bool, props: spec.Basic.Properties, body: bytes
) -> bytes:
    method = spec.Basic.Publish(exchange=ex, routing_key=key, mandatory=mandatory)
    parts = [
        pframe.marshal(method, number),
        pframe.marshal(pheader.ContentHeader(0, len(body), props), number),
    ]
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(
    number=st.integers(min_value=1, max_value=2047),
    ex=exchange,
    key=shortstr,
    mandatory=st.booleans(),
    props=properties,
    size=st.integers(min_value=0, max_value=3000),
)
def test_a_publish_is_what_pamqp_writes(
    number: int, ex: str, key: str, mandatory: bool, props: spec.Basic.Properties, size: int
) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ours = wire.publish_frames(number, ex, key, mandatory, props, body, 131072)
    head = pamqp_publish(number, ex, key, mandatory, props, body)
    assert ours[: len(head)] == head
    # The body: one frame (type 3, the channel, its size, the bytes, the end octet) if any.
    rest = ours[len(head) :]
    if size == 0:
        assert rest == b""
    else:
        head = b"\x03" + number.to_bytes(2, "big") + size.to_bytes(4, "big")
        assert rest == head + body + b"\xce"


def test_a_body_over_the_frame_size_is_split_and_read_back_whole() -> None:
    body = b"".join(i.to_bytes(2, "big") for i in range(5000))  # 10,000 bytes
    raw = wire.publish_frames(1, "x", "k", False, spec.Basic.Properties(), body, 4096)
    at, frames = 0, []
    while at < len(raw):
        used, _channel, value = pframe.unmarshal(raw[at:])
        frames.append(value)
        at += used
    method, header, *parts = frames
    assert isinstance(method, spec.Basic.Publish)
    assert isinstance(header, pheader.ContentHeader) and header.body_size == len(body)
    values = [p.value for p in parts if isinstance(p, pbody.ContentBody)]
    assert [len(v) for v in values] == [4088, 4088, 1824]
    assert b"".join(values) == body


@pytest.mark.parametrize(("ex", "key"), [("bad name!", "k"), ("x" * 128, "k"), ("ok", "é" * 128)])
def test_what_pamqp_refuses_is_refused_before_anything_is_written(ex: str, key: str) -> None:
    with pytest.raises((ValueError, TypeError)) as theirs:
        pamqp_publish(1, ex, key, False, spec.Basic.Properties(), b"")
    with pytest.raises(theirs.type):
        wire.publish_frames(1, ex, key, False, spec.Basic.Properties(), b"", 131072)


def test_a_property_string_over_255_bytes_is_refused() -> None:
    props = spec.Basic.Properties(correlation_id="x" * 256)
    with pytest.raises(TypeError):
        wire.header_frame(1, 0, props)
