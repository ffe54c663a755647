"""What the AMQP client's unit tests share: generated message properties, frames cut short, and
a transport that records what a connection writes."""

from __future__ import annotations

import datetime

from hypothesis import strategies as st
from pamqp import commands as spec

shortstr = st.text(max_size=40)


def basic_properties(tables: bool) -> st.SearchStrategy[spec.Basic.Properties]:
    """Any Basic.Properties; with ``tables``, headers and timestamps too (pamqp's own path)."""
    optional = st.none() | shortstr
    return st.builds(
        spec.Basic.Properties,
        content_type=optional,
        content_encoding=optional,
        headers=st.none()
        | (
            st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8))
            if tables
            else st.none()
        ),
        delivery_mode=st.none() | st.sampled_from([1, 2]),
        priority=st.none() | st.integers(min_value=0, max_value=9),
        correlation_id=optional,
        reply_to=optional,
        expiration=st.none() | st.integers(min_value=1, max_value=10**9).map(str),
        message_id=optional,
        timestamp=st.none()
        | (st.just(datetime.datetime(2026, 12, 3, 12, 0, 0)) if tables else st.none()),
        message_type=optional,
        user_id=optional,
        app_id=optional,
    )


def cut(frame: bytes, keep: int) -> bytes:
    """The frame's first ``keep`` payload bytes, its size field and end marker made to fit:
    what a broker that sent too little would have sent."""
    payload = frame[7 : 7 + keep]
    return frame[:3] + len(payload).to_bytes(4, "big") + payload + b"\xce"


class Transport:
    """Records what is written; closed once the connection closes it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
