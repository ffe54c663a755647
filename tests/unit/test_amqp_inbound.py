"""vsmd's own decoding of a delivery, its content header and a publisher confirm against
pamqp's, over frames pamqp encoded; and the ack a consumer writes, byte for byte."""

from __future__ import annotations

import datetime
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp import header as pheader

from tests.support.amqp_frames import basic_properties, cut, shortstr
from vsmd.amqp import inbound, wire

tag = st.integers(min_value=0, max_value=2**63 - 1)
channel_number = st.integers(min_value=0, max_value=2047)
properties = basic_properties(tables=False)


def _theirs(frame: bytes) -> object:
    used, _number, value = pframe.unmarshal(frame)
    assert used == len(frame)
    return value


def _fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in type(obj).__slots__}  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(
    number=channel_number,
    consumer=shortstr,
    delivery=tag,
    redelivered=st.booleans(),
    ex=st.from_regex(r"[a-zA-Z0-9_.:\-]{0,60}", fullmatch=True),
    key=shortstr,
)
def test_a_delivery_reads_as_pamqp_reads_it(
    number: int, consumer: str, delivery: int, redelivered: bool, ex: str, key: str
) -> None:
    method = spec.Basic.Deliver(consumer, delivery, redelivered, ex, key)
    frame = pframe.marshal(method, number)
    assert inbound.method_id(frame) == inbound.DELIVER
    ours = inbound.deliver(frame)
    assert isinstance(ours, spec.Basic.Deliver)
    assert _fields(ours) == _fields(_theirs(frame))


@settings(max_examples=100, deadline=None)
@given(number=channel_number, delivery=tag, multiple=st.booleans())
def test_a_confirm_reads_as_pamqp_reads_it_and_an_ack_is_what_pamqp_writes(
    number: int, delivery: int, multiple: bool
) -> None:
    method = spec.Basic.Ack(delivery_tag=delivery, multiple=multiple)
    frame = pframe.marshal(method, number)
    assert inbound.method_id(frame) == inbound.ACK
    assert _fields(inbound.ack(frame)) == _fields(_theirs(frame))
    assert wire.ack_frame(number, delivery, multiple) == frame


@settings(max_examples=300, deadline=None)
@given(number=channel_number, size=st.integers(min_value=0, max_value=2**40), props=properties)
def test_a_content_header_reads_as_pamqp_reads_it(
    number: int, size: int, props: spec.Basic.Properties
) -> None:
    frame = pframe.marshal(pheader.ContentHeader(0, size, props), number)
    ours, theirs = inbound.header(frame), _theirs(frame)
    assert isinstance(ours, pheader.ContentHeader) and isinstance(theirs, pheader.ContentHeader)
    for header in (ours, theirs):  # pamqp types class_id as None: it is set on decoding
        assert (cast(object, header.class_id), header.weight, header.body_size) == (60, 0, size)
    assert _fields(ours.properties) == _fields(theirs.properties)


@pytest.mark.parametrize(
    "props",
    [
        spec.Basic.Properties(headers={"x-reason": "bad"}),
        spec.Basic.Properties(timestamp=datetime.datetime(2026, 12, 3, 12, 0, 0)),
    ],
)
def test_a_header_with_a_table_or_a_timestamp_is_left_to_pamqp(
    props: spec.Basic.Properties,
) -> None:
    assert inbound.header(pframe.marshal(pheader.ContentHeader(0, 5, props), 1)) is None


def test_a_truncated_frame_is_a_value_error_wherever_it_is_cut() -> None:
    deliver = pframe.marshal(spec.Basic.Deliver("ctag", 7, False, "ex", "key.one"), 1)
    ack = pframe.marshal(spec.Basic.Ack(delivery_tag=7), 1)
    props = spec.Basic.Properties(content_type="application/json", delivery_mode=1, app_id="a")
    header = pframe.marshal(pheader.ContentHeader(0, 5, props), 1)
    for frame, decode in ((deliver, inbound.deliver), (ack, inbound.ack), (header, inbound.header)):
        whole = len(frame) - 8
        for keep in range(4, whole):
            with pytest.raises(ValueError):
                decode(cut(frame, keep))
