"""The inbox's last resort: a fault of the runtime's own while handling one message answers the
requester with INTERNAL and still acks, instead of leaving it to wait out its timeout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from vsmd.errors import BrokerError
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
