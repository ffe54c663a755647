"""How long a VSM waits for the broker's handshake: long at start, short on a reconnect."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest

from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError
from vsmd.spec import VsmSpec
from vsmd.vsm.bus import CONNECT_TIMEOUT, START_CONNECT_TIMEOUT, VsmBus


async def _ignore(_message: Any) -> None:
    return None


def _bus() -> VsmBus:
    spec = VsmSpec(
        vsm_id="a1",
        name="a",
        path="a",
        parent_id=None,
        depth=1,
        agent="noop",
        broker_url="amqp://guest:guest@127.0.0.1:5672/",
        namespace="vsm",
    )
    return VsmBus(spec, Topology(spec.namespace), _ignore)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timeouts the bus gave aio-pika's connect, which here refuses at once."""
    timeouts: list[float] = []

    async def refuse(_url: str, timeout: float, **_kw: Any) -> Any:
        timeouts.append(timeout)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(aio_pika, "connect", refuse)
    return timeouts


def test_a_reconnect_gives_up_on_a_slow_handshake_soon(asked: list[float]) -> None:
    with pytest.raises(BrokerError, match="cannot set up the inbox"):
        asyncio.run(_bus().open())
    assert asked == [CONNECT_TIMEOUT]


def test_the_start_waits_longer_for_a_busy_broker(asked: list[float]) -> None:
    with pytest.raises(BrokerError, match="cannot set up the inbox"):
        asyncio.run(_bus().open(START_CONNECT_TIMEOUT))
    assert asked == [START_CONNECT_TIMEOUT]
    assert START_CONNECT_TIMEOUT > CONNECT_TIMEOUT
