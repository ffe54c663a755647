"""The calls channel of a VSM (vsmd/vsm/calls.py): returned requests fail whoever waits on them,
a lost connection fails everything waiting, and an aiormq whose frame reader cannot be given a
return handler gets a confirm channel instead."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import aiormq.abc
import pytest
from pamqp import commands as spec
from pamqp.header import ContentHeader

from vsmd.errors import BrokerError, Timeout, Unreachable
from vsmd.vsm import calls as calls_module
from vsmd.vsm.calls import Calls, Delivery, _hear_returns, properties


def _returned(corr: str | None, key: str) -> Any:
    """What aiormq delivers for a basic.return (the fields Calls reads)."""
    return SimpleNamespace(
        header=SimpleNamespace(properties=SimpleNamespace(correlation_id=corr)), routing_key=key
    )


def _no_close(*_args: Any) -> None:
    return None


def _calls() -> Calls:
    def gone() -> Any:
        raise BrokerError("not connected to the broker")

    return Calls("ns.recursive", gone, _no_close)


class _Listener:
    def __init__(self) -> None:
        self.returned: list[Unreachable] = []
        self.lost = 0

    async def on_message(self, body: bytes) -> None:
        return None

    async def on_lost(self) -> None:
        self.lost += 1

    async def on_returned(self, error: Unreachable) -> None:
        self.returned.append(error)


async def _settle() -> None:
    for _ in range(3):  # the listener's handler runs as a task of its own
        await asyncio.sleep(0)


def test_a_returned_request_fails_its_caller_and_no_other() -> None:
    async def main() -> None:
        calls = _calls()
        loop = asyncio.get_running_loop()
        mine, other = loop.create_future(), loop.create_future()
        calls.pending.update({"c1": mine, "c2": other})
        calls.on_returned(_returned("c1", "vsm.0123456789ab"))
        calls.on_returned(_returned("nobody", "vsm.x"))  # a caller that gave up: ignored
        with pytest.raises(Unreachable, match="no VSM at '0123456789ab': unknown or down"):
            await mine
        assert not other.done()

    asyncio.run(main())


def test_a_returned_message_to_the_daemon_says_the_daemon_is_away() -> None:
    async def main() -> None:
        calls = _calls()
        fut = asyncio.get_running_loop().create_future()
        calls.pending["c"] = fut
        calls.on_returned(_returned("c", "up.root.state"))
        with pytest.raises(Unreachable, match="vsmd is not on the broker"):
            await fut

    asyncio.run(main())


def test_a_returned_session_message_reaches_its_listener() -> None:
    async def main() -> None:
        calls = _calls()
        listener = _Listener()
        calls.listeners["sid"] = listener
        calls.on_returned(_returned("sid", "down.root.a"))
        await _settle()
        assert [e.message for e in listener.returned] == ["no VSM at 'root.a': unknown or down"]

    asyncio.run(main())


def test_a_lost_connection_fails_every_request_and_tells_every_listener() -> None:
    async def main() -> None:
        calls = _calls()
        calls.channel = SimpleNamespace()  # type: ignore[assignment]
        fut = asyncio.get_running_loop().create_future()
        calls.pending["c"] = fut
        listener = _Listener()
        calls.listeners["sid"] = listener
        calls.lost()
        await _settle()
        assert calls.channel is None  # opened anew on the next call
        with pytest.raises(BrokerError, match="lost the broker"):
            await fut
        assert listener.lost == 1

    asyncio.run(main())


class _Raw:
    """An aiormq channel's frame reader as far as _hear_returns uses it."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames

    async def _get_frame(self) -> Any:
        return self.frames.pop(0)

    async def _read_content(self, frame: Any, header: ContentHeader) -> Any:
        return SimpleNamespace(delivery=frame, header=header, body=self.frames.pop(0))

    async def _on_return_frame(self, frame: Any) -> None:
        raise AssertionError("aiormq's own handler drops returns on an unconfirmed channel")


def test_the_reader_of_an_unconfirmed_channel_hands_returns_over() -> None:
    async def main() -> None:
        got: list[Any] = []
        raw = _Raw([ContentHeader(body_size=2), b"{}"])
        assert _hear_returns(raw, got.append)  # type: ignore[arg-type]
        frame = spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key="vsm.x")
        await raw._on_return_frame(frame)
        assert len(got) == 1 and got[0].delivery is frame and got[0].body == b"{}"
        assert raw.frames == []  # header and body read, as the reader expects

    asyncio.run(main())


def test_a_handler_that_fails_does_not_stop_the_reader() -> None:
    async def main() -> None:
        def broken(_message: Any) -> None:
            raise RuntimeError("boom")

        raw = _Raw([ContentHeader(body_size=2), b"{}"])
        assert _hear_returns(raw, broken)  # type: ignore[arg-type]
        await raw._on_return_frame(spec.Basic.Return(routing_key="vsm.x"))

    asyncio.run(main())


class _PlainRaw:
    """An aiormq channel without the reader helpers _hear_returns needs."""

    def __init__(self) -> None:
        self.consumed: list[str] = []

    async def basic_consume(self, queue: str, _callback: Any, no_ack: bool) -> None:
        self.consumed.append(queue)


class _Channel:
    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.closed = False
        self.close_callbacks: set[Any] = set()

    async def get_underlay_channel(self) -> Any:
        return self.raw

    async def close(self) -> None:
        self.closed = True


def test_without_the_reader_helpers_the_calls_channel_confirms() -> None:
    async def main() -> None:
        asked: list[dict[str, Any]] = []
        made: list[_Channel] = []

        async def channel(**kw: Any) -> _Channel:
            asked.append(kw)
            made.append(_Channel(_PlainRaw()))
            return made[-1]

        conn = cast(Any, SimpleNamespace(channel=channel))
        closed: list[Any] = []
        calls = Calls("ns.recursive", lambda: conn, closed.append)
        await calls.open()
        assert asked == [
            {"publisher_confirms": False},
            {"publisher_confirms": True, "on_return_raises": True},
        ]
        assert made[0].closed and calls.channel is cast(Any, made[1])
        assert made[1].raw.consumed == ["amq.rabbitmq.reply-to"]  # replies on the one kept
        # The broker closing the channel kept is the VSM's to hear (it reconnects); the one
        # closed on purpose is not.
        assert made[1].close_callbacks == {closed.append} and made[0].close_callbacks == set()
        await calls.open()
        assert len(asked) == 2  # once per connection

    asyncio.run(main())


def test_a_delivery_carries_what_the_runtime_reads_and_acks_on_its_channel() -> None:
    acked: list[int] = []

    class _AckRaw:
        async def basic_ack(self, tag: int) -> None:
            acked.append(tag)

    props = spec.Basic.Properties(reply_to="r", correlation_id="c", user_id="vsm-a1")
    frame = spec.Basic.Deliver(delivery_tag=7, exchange="ns.recursive", routing_key="vsm.a1")
    raw = aiormq.abc.DeliveredMessage(
        delivery=frame,
        header=ContentHeader(properties=props, body_size=2),
        body=b"{}",
        channel=_AckRaw(),  # type: ignore[arg-type]
    )
    d = Delivery(raw)
    assert (d.body, d.reply_to, d.correlation_id, d.user_id) == (b"{}", "r", "c", "vsm-a1")
    assert (d.exchange, d.routing_key) == ("ns.recursive", "vsm.a1")
    asyncio.run(d.ack())
    assert acked == [7]


def test_a_calls_expiration_is_in_milliseconds_and_never_zero() -> None:
    assert properties(expiration=2.5).expiration == "2500"
    assert properties(expiration=0.0001).expiration == "1"  # "0" would mean: deliver now or drop
    assert properties().expiration is None
    assert properties(user_id="vsm-x").user_id == "vsm-x"


class _Broker:
    """An aiormq channel that records what is published and lets a test answer it."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, Any]] = []
        self.on_publish: Any = None

    async def _get_frame(self) -> Any:
        raise AssertionError("no frames in this test")

    async def _read_content(self, frame: Any, header: Any) -> Any:
        raise AssertionError("no frames in this test")

    async def _on_return_frame(self, frame: Any) -> None:
        raise AssertionError("replaced by _hear_returns")

    async def basic_consume(self, queue: str, _callback: Any, no_ack: bool) -> None:
        return None

    async def basic_publish(self, body: bytes, **kw: Any) -> None:
        self.published.append((kw["routing_key"], body, kw["properties"]))
        if self.on_publish is not None:
            self.on_publish(kw["properties"])


def _open_calls(broker: _Broker) -> Calls:
    async def channel(**_kw: Any) -> _Channel:
        return _Channel(broker)

    conn = cast(Any, SimpleNamespace(channel=channel))
    return Calls("ns.recursive", lambda: conn, _no_close)


def _reply(corr: str, body: bytes) -> Any:
    props = spec.Basic.Properties(correlation_id=corr)
    return aiormq.abc.DeliveredMessage(
        delivery=spec.Basic.Deliver(routing_key="amq.rabbitmq.reply-to.x"),
        header=ContentHeader(properties=props, body_size=len(body)),
        body=body,
        channel=None,  # type: ignore[arg-type]
    )


def test_a_request_gets_its_reply_and_carries_what_the_broker_needs() -> None:
    async def main() -> None:
        broker = _Broker()
        calls = _open_calls(broker)
        loop = asyncio.get_running_loop()
        broker.on_publish = lambda p: loop.create_task(
            calls.on_reply(_reply(p.correlation_id, b'{"ok":true}'))
        )
        answer = await calls.request("vsm.b2", b"{}", 5.0, None, "vsm-a1")
        assert answer.body == b'{"ok":true}'
        [(key, _body, props)] = broker.published
        assert key == "vsm.b2" and props.reply_to == "amq.rabbitmq.reply-to"
        assert props.expiration == "5000" and props.user_id == "vsm-a1"
        assert calls.pending == {}  # nothing left behind

    asyncio.run(main())


def test_a_target_whose_probe_comes_back_went_down_before_it_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calls_module, "PROBE_EVERY", 0.01)

    async def main() -> None:
        broker = _Broker()
        calls = _open_calls(broker)

        def returned(props: Any) -> None:
            if len(broker.published) == 2:  # the probe, not the request: the inbox is gone
                calls.on_returned(_returned(props.correlation_id, "vsm.b2"))

        broker.on_publish = returned
        with pytest.raises(Unreachable, match="'b2' went down before it answered"):
            await calls.request("vsm.b2", b"{}", 5.0, b'{"type":"probe"}', None)
        assert broker.published[1][1] == b'{"type":"probe"}'

    asyncio.run(main())


def test_a_request_without_an_answer_times_out() -> None:
    async def main() -> None:
        calls = _open_calls(_Broker())
        with pytest.raises(Timeout, match=r"no answer from 'b2' within 0\.05 s"):
            await calls.request("vsm.b2", b"{}", 0.05, None, None)
        assert calls.pending == {}

    asyncio.run(main())
