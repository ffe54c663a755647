"""How long a VSM waits for the broker's handshake (long at start, short on a reconnect), and
how a re-parenting holds whoever addresses by place until the new place is in effect."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from vsmd import amqp
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError
from vsmd.spec import VsmSpec
from vsmd.vsm.bus import CONNECT_TIMEOUT, START_CONNECT_TIMEOUT, Made, VsmBus
from vsmd.vsm.context import Context, ThreadContext


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
    """The timeouts the bus gave the AMQP client's connect, which here refuses at once."""
    timeouts: list[float] = []

    async def refuse(_url: str, timeout: float, **_kw: Any) -> Any:
        timeouts.append(timeout)
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(amqp, "connect", refuse)
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


async def _yield(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)  # lets the other tasks run; no wall-clock wait


def test_addressing_by_place_waits_until_a_move_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        bus = _bus()
        token = asyncio.Event()

        async def slow_refresh() -> None:
            await token.wait()  # the daemon has not handed out the new place's token yet

        monkeypatch.setattr(bus, "refresh_token", slow_refresh)
        assert bus.is_settled
        move = asyncio.create_task(bus.move(("r00000000000",)))
        await _yield()
        sender = asyncio.create_task(bus.settled())
        await _yield()
        assert not bus.is_settled and not sender.done()
        token.set()
        await move
        await asyncio.wait_for(sender, 5.0)
        assert bus.is_settled and bus.ancestors == ("r00000000000",)

    asyncio.run(main())


def test_a_failed_move_releases_the_senders_and_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        bus = _bus()

        async def refused() -> None:
            raise BrokerError("cannot refresh the broker token: gone")

        monkeypatch.setattr(bus, "refresh_token", refused)
        with pytest.raises(BrokerError, match="refresh"):
            await bus.move(("r00000000000",))
        assert bus.is_settled
        # The connection is given up; the next one binds the keys of the new place.
        assert bus.lost.is_set() and bus.ancestors == ("r00000000000",)
        await asyncio.wait_for(bus.settled(), 5.0)

    asyncio.run(main())


def test_an_agents_parent_id_follows_a_move(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        bus = _bus()

        async def nothing() -> None:
            return None

        monkeypatch.setattr(bus, "refresh_token", nothing)
        runtime: Any = SimpleNamespace(spec=bus.spec, state=None, mcp=None, bus=bus)
        ctx = Context(runtime)
        plain = ThreadContext(ctx, asyncio.get_running_loop())
        assert ctx.parent_id is None and plain.parent_id is None  # a root, as spawned
        await bus.move(("r00000000000", "p00000000000"))
        assert ctx.parent_id == plain.parent_id == "p00000000000"

    asyncio.run(main())


class _Conn:
    """A connection a standby made ahead: open, or already closed by the broker."""

    def __init__(self, closed: bool) -> None:
        self.is_open = not closed
        self.close_callbacks: list[Any] = []
        self.channels_opened = 0
        self.closed_by_us = False

    async def channel(self, **_kw: Any) -> Any:
        self.channels_opened += 1
        raise ConnectionError("the broker went away")  # ends open() once the bus used it

    async def close(self) -> None:
        self.closed_by_us = True


class _Channel:
    """Its first channel, open."""

    def __init__(self) -> None:
        self.is_open = True
        self.close_callbacks: list[Any] = []

    async def queue_declare(self, *_a: Any, **_kw: Any) -> Any:  # the inbox, the first use
        raise ConnectionError("the broker went away")


def test_a_connection_made_ahead_is_used_while_open(asked: list[float]) -> None:
    conn = _Conn(closed=False)
    with pytest.raises(BrokerError, match="the broker went away"):
        asyncio.run(_bus().open(START_CONNECT_TIMEOUT, Made(conn, None)))  # type: ignore[arg-type]
    assert asked == []  # no connect of its own
    assert conn.channels_opened == 1  # its first channel, which the standby could not open
    assert conn.closed_by_us  # the failed open closed what it had taken


def test_the_first_channel_made_ahead_is_used_too(asked: list[float]) -> None:
    conn, ch = _Conn(closed=False), _Channel()
    bus = _bus()
    with pytest.raises(BrokerError, match="the broker went away"):
        asyncio.run(bus.open(START_CONNECT_TIMEOUT, Made(conn, ch)))  # type: ignore[arg-type]
    assert asked == [] and conn.channels_opened == 0
    assert ch.close_callbacks  # watched as the bus's own: its close is a lost broker


def test_a_connection_made_ahead_and_since_closed_is_replaced(asked: list[float]) -> None:
    conn = _Conn(closed=True)  # by the broker, while the standby waited
    with pytest.raises(BrokerError, match="refused"):
        asyncio.run(_bus().open(START_CONNECT_TIMEOUT, Made(conn, None)))  # type: ignore[arg-type]
    assert asked == [START_CONNECT_TIMEOUT]
    assert conn.closed_by_us  # what was left of it, let go
