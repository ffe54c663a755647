"""A VSM's inbox: state messages and probes taken at once in the consumer's callback,
everything else (and every state message that fails there) on a task's way; and that way's last
resort, where a fault of the runtime's own answers the requester with INTERNAL and still acks,
instead of leaving it to wait out its timeout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from vsmd.errors import BrokerError
from vsmd.protocol import Envelope
from vsmd.vsm.runtime import VsmRuntime


class FakeBus:
    def __init__(self) -> None:
        self.replies: list[tuple[str, str | None, bytes]] = []

    async def reply(self, reply_to: str, corr: str | None, body: bytes) -> None:
        self.replies.append((reply_to, corr, body))


class FakeDelivery:
    def __init__(self, reply_to: str | None) -> None:
        self.reply_to = reply_to
        self.correlation_id = "c1"
        self.acked = 0

    async def ack(self) -> None:
        self.acked += 1


def _runtime(fault: BaseException) -> Any:
    async def handle(_msg: object) -> bytes | None:
        raise fault

    return SimpleNamespace(_handle=handle, bus=FakeBus(), spec=SimpleNamespace(vsm_id="v1"))


def test_an_unexpected_fault_answers_internal_and_acks(caplog: pytest.LogCaptureFixture) -> None:
    rt, msg = _runtime(KeyError("surprise")), FakeDelivery("amq.rabbitmq.reply-to.x")
    asyncio.run(VsmRuntime._on_message(rt, msg))  # type: ignore[arg-type]
    [(to, corr, body)] = rt.bus.replies
    reply = orjson.loads(body)
    assert (to, corr, reply["ok"]) == (msg.reply_to, "c1", False)
    assert reply["error"]["code"] == "INTERNAL"
    assert msg.acked == 1
    assert "handling a message failed" in caplog.text and "surprise" in caplog.text


def test_an_unexpected_fault_without_a_requester_is_only_logged() -> None:
    rt, msg = _runtime(ValueError("x")), FakeDelivery(None)
    asyncio.run(VsmRuntime._on_message(rt, msg))  # type: ignore[arg-type]
    assert rt.bus.replies == [] and msg.acked == 1


def test_a_lost_broker_is_no_fault_of_the_message() -> None:
    # The main loop reconnects; answering on the lost connection would fail again.
    rt, msg = _runtime(BrokerError("gone")), FakeDelivery("amq.rabbitmq.reply-to.x")
    asyncio.run(VsmRuntime._on_message(rt, msg))  # type: ignore[arg-type]
    assert rt.bus.replies == [] and msg.acked == 1


class FakeTraffic:
    def __init__(self) -> None:
        self.received = 0

    def count_in(self) -> None:
        self.received += 1


class FakeState:
    def __init__(self) -> None:
        self.children: list[tuple[str, object]] = []

    def apply_child(self, child: str, body: object) -> None:
        self.children.append((child, body))


def _taker() -> Any:
    rt = SimpleNamespace(
        spec=SimpleNamespace(vsm_id="parent", max_message_bytes=65536, token_socket=""),
        bus=SimpleNamespace(traffic=FakeTraffic()),
        state=FakeState(),
    )
    rt._state_message = lambda env: VsmRuntime._state_message(rt, env)  # type: ignore[arg-type]
    return rt


def _delivery(body: bytes, reply_to: str | None = None) -> Any:
    return SimpleNamespace(body=body, reply_to=reply_to, env=None)


def _env(kind: str, sender: str, body: dict[str, object]) -> bytes:
    return Envelope(type=kind, sender=sender, path="p.c", body=body).encode()


def test_a_state_message_is_taken_at_once() -> None:
    rt, msg = _taker(), _delivery(_env("state", "child", {"schema": 1, "entries": []}))
    assert VsmRuntime._take_now(rt, msg) is True
    assert rt.state.children == [("child", {"schema": 1, "entries": []})]
    assert rt.bus.traffic.received == 1


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (_env("call", "child", {"kind": "k"}), True),  # for the agent: its own task
        (_env("policy", "vsmd", {"entries": []}), True),  # no origin: the task's way refuses it
        (b"{not json", False),
    ],
)
def test_what_is_not_a_good_state_message_goes_the_tasks_way(raw: bytes, decoded: bool) -> None:
    rt, msg = _taker(), _delivery(raw)
    assert VsmRuntime._take_now(rt, msg) is False
    assert (msg.env is not None) is decoded  # decoded once: the task uses it
    assert rt.state.children == [] and rt.bus.traffic.received == 0


def test_a_probe_is_taken_at_once_and_is_no_traffic() -> None:
    rt, msg = _taker(), _delivery(Envelope(type="probe", sender="vsmd").encode())
    assert VsmRuntime._take_now(rt, msg) is True
    assert rt.state.children == [] and rt.bus.traffic.received == 0


def test_a_state_message_that_wants_an_answer_goes_the_tasks_way() -> None:
    rt = _taker()
    msg = _delivery(_env("state", "child", {"entries": []}), reply_to="amq.rabbitmq.reply-to.x")
    assert VsmRuntime._take_now(rt, msg) is False and rt.state.children == []
