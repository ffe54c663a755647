"""The calls channel of a VSM (vsmd/vsm/calls.py): returned requests fail whoever waits on them,
a lost connection fails everything waiting, replies reach their request or listener."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pamqp import commands as spec

from vsmd import amqp
from vsmd.errors import BrokerError, Timeout, Unreachable
from vsmd.vsm import calls as calls_module
from vsmd.vsm.calls import Calls, Delivery, properties


def _message(
    method: spec.Basic.Deliver | spec.Basic.Return,
    body: bytes = b"{}",
    channel: Any = None,
    **props: Any,
) -> amqp.Message:
    return amqp.Message(channel, method, amqp.Properties(**props), body)


def _returned(corr: str | None, key: str) -> amqp.Message:
    """What the client hands on_return for a basic.return."""
    method = spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key=key)
    return _message(method, correlation_id=corr)


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


class _Channel:
    """The client's channel as Calls uses it: records what is published and consumed."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, Any]] = []
        self.consumed: list[str] = []
        self.on_publish: Any = None
        self.on_return: Any = None
        self.close_callbacks: list[Any] = []

    async def consume(self, queue: str, _callback: Any, no_ack: bool) -> str:
        assert no_ack  # replies are not acked
        self.consumed.append(queue)
        return "c1"

    async def publish(
        self, body: bytes, _exchange: str, key: str, props: Any, _mandatory: bool
    ) -> None:
        self.published.append((key, body, props))
        if self.on_publish is not None:
            self.on_publish(props)


def test_the_calls_channel_is_opened_once_and_hears_returns_and_closes() -> None:
    async def main() -> None:
        made: list[_Channel] = []

        async def channel(**kw: Any) -> _Channel:
            assert kw == {}  # no confirms: see calls.py
            made.append(_Channel())
            return made[-1]

        conn = cast(Any, SimpleNamespace(channel=channel))
        closed: list[Any] = []
        calls = Calls("ns.recursive", lambda: conn, closed.append)
        await calls.open()
        await calls.open()
        assert len(made) == 1 and calls.channel is cast(Any, made[0])
        assert made[0].consumed == ["amq.rabbitmq.reply-to"]
        assert made[0].on_return == calls.on_returned
        assert made[0].close_callbacks == [closed.append]  # the VSM hears the broker close it

    asyncio.run(main())


def test_a_delivery_carries_what_the_runtime_reads_and_acks_on_its_channel() -> None:
    acked: list[int] = []

    class _AckChannel:
        def ack(self, tag: int) -> None:
            acked.append(tag)

    frame = spec.Basic.Deliver(delivery_tag=7, exchange="ns.recursive", routing_key="vsm.a1")
    raw = _message(frame, channel=_AckChannel(), reply_to="r", correlation_id="c", user_id="vsm-a1")
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


def _open_calls(broker: _Channel) -> Calls:
    async def channel(**_kw: Any) -> _Channel:
        return broker

    conn = cast(Any, SimpleNamespace(channel=channel))
    return Calls("ns.recursive", lambda: conn, _no_close)


def _reply(corr: str, body: bytes) -> amqp.Message:
    method = spec.Basic.Deliver(routing_key="amq.rabbitmq.reply-to.x")
    return _message(method, body, correlation_id=corr)


def test_a_request_gets_its_reply_and_carries_what_the_broker_needs() -> None:
    async def main() -> None:
        broker = _Channel()
        calls = _open_calls(broker)
        loop = asyncio.get_running_loop()
        broker.on_publish = lambda p: loop.call_soon(
            calls.on_reply, _reply(p.correlation_id, b'{"ok":true}')
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
        broker = _Channel()
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
        calls = _open_calls(_Channel())
        with pytest.raises(Timeout, match=r"no answer from 'b2' within 0\.05 s"):
            await calls.request("vsm.b2", b"{}", 0.05, None, None)
        assert calls.pending == {}

    asyncio.run(main())


def test_a_reply_for_a_listener_reaches_it_and_a_stray_one_is_dropped() -> None:
    async def main() -> None:
        calls = _calls()
        got: list[bytes] = []

        class _Got(_Listener):
            async def on_message(self, body: bytes) -> None:
                got.append(body)

        calls.listeners["sid"] = _Got()
        calls.on_reply(_reply("sid", b'{"a":1}'))
        calls.on_reply(_reply("nobody", b'{"b":2}'))  # a caller that gave up
        await _settle()
        assert got == [b'{"a":1}']

    asyncio.run(main())
