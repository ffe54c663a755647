"""What the VSM's AMQP client does with what a healthy broker never sends: a malformed frame,
silence past two heartbeats, a full socket buffer. Driven through the protocol's own callbacks
with a transport that records what is written (tests/integration/test_amqp_client*.py talk to
the real broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pamqp import body as pbody
from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp import header as pheader
from yarl import URL

from tests.support.amqp_frames import Transport, cut
from vsmd import amqp
from vsmd.amqp import wire
from vsmd.amqp.connection import Connection


async def _open(heartbeat: int = 0) -> tuple[Connection, Transport]:
    """A connection through its handshake, as far as the broker's frames drive it."""
    conn = Connection(URL("amqp://guest:guest@127.0.0.1/"), heartbeat)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    tune = spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=heartbeat)
    conn.data_received(pframe.marshal(tune, 0))
    conn.data_received(pframe.marshal(spec.Connection.OpenOk(), 0))
    await asyncio.wait_for(asyncio.shield(conn.opened), 1.0)
    return conn, transport


def _lost(conn: Connection) -> list[amqp.AmqpError]:
    got: list[amqp.AmqpError] = []
    conn.close_callbacks.append(lambda _c, err: got.append(err))
    return got


def test_a_frame_without_its_end_marker_ends_the_connection() -> None:
    async def main() -> None:
        conn, transport = await _open()
        got = _lost(conn)
        bad = bytearray(pframe.marshal(spec.Basic.Ack(delivery_tag=1), 1))
        bad[-1] = 0x00  # the frame-end octet
        conn.data_received(bytes(bad))
        assert transport.closed and not conn.is_open
        assert len(got) == 1 and got[0].reply_code == 501  # type: ignore[attr-defined]
        assert "malformed frame" in str(got[0])
        with pytest.raises(amqp.ConnectionLost):
            await conn.channel()

    asyncio.run(main())


def test_frames_split_across_reads_are_put_together() -> None:
    async def main() -> None:
        conn, transport = await _open()
        opening = asyncio.ensure_future(conn.channel())
        await asyncio.sleep(0)
        data = pframe.marshal(spec.Channel.OpenOk(), 1)
        for i in range(len(data)):  # one byte a read
            conn.data_received(data[i : i + 1])
        channel = await asyncio.wait_for(opening, 1.0)
        assert channel.is_open and not transport.closed

    asyncio.run(main())


def test_a_delivery_reaches_its_consumer_whole_and_a_truncated_one_ends_the_connection() -> None:
    """The read path with the direct decoding of vsmd/amqp/inbound.py: the consumer gets the
    message as published, its ack is written, and a malformed delivery ends the connection
    as any malformed frame does."""

    async def main() -> None:
        conn, transport = await _open()
        opening = asyncio.ensure_future(conn.channel())
        await asyncio.sleep(0)
        conn.data_received(pframe.marshal(spec.Channel.OpenOk(), 1))
        ch = await asyncio.wait_for(opening, 1.0)
        got: list[amqp.Message] = []
        consuming = asyncio.ensure_future(ch.consume("q", got.append, tag="t"))
        await asyncio.sleep(0)
        conn.data_received(pframe.marshal(spec.Basic.ConsumeOk(consumer_tag="t"), 1))
        await asyncio.wait_for(consuming, 1.0)
        body = b'{"type":"call"}'
        props = spec.Basic.Properties(correlation_id="c1", reply_to="amq.rabbitmq.reply-to.x")
        conn.data_received(
            pframe.marshal(spec.Basic.Deliver("t", 41, True, "ns.recursive", "vsm.abc"), 1)
            + pframe.marshal(pheader.ContentHeader(0, len(body), props), 1)
            + pframe.marshal(pbody.ContentBody(body), 1)
        )
        [msg] = got
        assert (msg.body, msg.delivery_tag, msg.redelivered) == (body, 41, True)
        assert (msg.exchange, msg.routing_key) == ("ns.recursive", "vsm.abc")
        assert msg.properties.correlation_id == "c1"
        assert msg.properties.reply_to == "amq.rabbitmq.reply-to.x"
        msg.ack()
        await asyncio.sleep(0)  # queued writes go out on the loop's next turn
        assert transport.written[-1] == wire.ack_frame(1, 41)
        lost = _lost(conn)
        deliver = pframe.marshal(spec.Basic.Deliver("t", 42, False, "ex", "k"), 1)
        conn.data_received(cut(deliver, 9))  # the delivery tag cut short
        assert transport.closed and len(lost) == 1 and "malformed frame" in str(lost[0])

    asyncio.run(main())


def test_silence_past_two_heartbeats_ends_the_connection_and_idling_sends_them() -> None:
    async def main() -> None:
        conn, transport = await _open(heartbeat=2)
        got = _lost(conn)
        assert conn._timer is not None
        conn._timer.cancel()
        beat = b"\x08\x00\x00\x00\x00\x00\x00\xce"

        def tick() -> None:  # the test turns the clock itself: each tick's re-arm is undone
            conn._beat()
            timer: Any = conn._timer
            timer.cancel()

        tick()  # the handshake wrote since the connection opened: no heartbeat needed yet
        assert conn.is_open and transport.written.count(beat) == 0
        tick()
        tick()  # two silent half-heartbeats of ours: a heartbeat each
        assert conn.is_open and transport.written.count(beat) == 2
        conn.data_received(beat)  # the broker's heartbeat
        for _ in range(4):  # the tick that notes it heard, then three silent ones
            tick()
        assert conn.is_open  # heard in between: counting started again
        tick()  # the fourth silent half-heartbeat in a row: two heartbeats missed
        assert not conn.is_open and transport.closed
        assert len(got) == 1 and "missed heartbeats" in str(got[0])

    asyncio.run(main())


def test_a_publish_waits_while_the_socket_buffer_is_full() -> None:
    async def main() -> None:
        conn, transport = await _open()
        opening = asyncio.ensure_future(conn.channel())
        await asyncio.sleep(0)
        conn.data_received(pframe.marshal(spec.Channel.OpenOk(), 1))
        channel = await asyncio.wait_for(opening, 1.0)
        conn.pause_writing()
        publish = asyncio.ensure_future(channel.publish(b"{}", "", "q"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not publish.done()  # written to the buffer, and the publisher held back
        conn.resume_writing()
        await asyncio.wait_for(publish, 1.0)
        conn._flush()
        assert any(b"\x00\x3c\x00\x28" in w for w in transport.written)  # basic.publish

    asyncio.run(main())
