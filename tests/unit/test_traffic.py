"""The message counts behind a VSM's rates, and the rate reporter's park until the next one."""

from __future__ import annotations

import asyncio

import pytest

from vsmd.vsm.runtime import RATE_WINDOW, rate_window
from vsmd.vsm.traffic import DEADBAND, Traffic, moved


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("count", ["count_in", "count_out"])
def test_a_parked_reporter_wakes_at_the_next_message_either_way(count: str) -> None:
    async def scenario() -> None:
        traffic = Traffic()
        parked = asyncio.create_task(traffic.until_next())
        await _turns()
        assert not parked.done()  # nothing moved: it stays parked, no timer wakes it
        getattr(traffic, count)()
        await asyncio.wait_for(parked, 5.0)
        assert (traffic.received, traffic.sent) == ((1, 0) if count == "count_in" else (0, 1))

    asyncio.run(scenario())


def test_counting_without_a_parked_reporter_only_counts() -> None:
    async def scenario() -> None:
        traffic = Traffic()
        traffic.count_in()
        traffic.count_out()
        traffic.count_out()
        parked = asyncio.create_task(traffic.until_next())
        await _turns()
        assert not parked.done()  # messages before it parked do not wake it
        traffic.count_in()
        await asyncio.wait_for(parked, 5.0)
        assert (traffic.received, traffic.sent) == (2, 2)

    asyncio.run(scenario())


def test_each_vsm_has_its_own_rate_window_within_a_quarter_of_the_nominal() -> None:
    """VSMs woken by one broadcast must not all report their rates at the same instant."""
    ids = [f"{i:012x}" for i in range(200)]
    windows = [rate_window(vsm_id) for vsm_id in ids]
    assert all(0.75 * RATE_WINDOW <= w <= 1.25 * RATE_WINDOW for w in windows)
    assert rate_window(ids[0]) == rate_window(ids[0])  # the same VSM keeps its window
    # Spread over the range, not bunched: some in each fifth of it.
    fifths = {int((w / RATE_WINDOW - 0.75) / 0.1) for w in windows}
    assert fifths == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    ("shown", "now"),
    [
        ((0.0, 0.0), (0.2, 0.0)),  # traffic started
        ((3.0, 1.0), (0.0, 1.0)),  # and stopped
        ((100.0, 0.0), (111.0, 0.0)),  # more than the dead band of a busy flow
        ((2.0, 2.0), (2.0, 2.6)),  # more than a message per window at a slow one
    ],
)
def test_a_rate_that_moved_is_written(shown: tuple[float, float], now: tuple[float, float]) -> None:
    assert moved(shown, now, window=5.0)


@pytest.mark.parametrize(
    ("shown", "now"),
    [
        ((0.0, 0.0), (0.0, 0.0)),
        ((100.0, 50.0), (109.0, 46.0)),  # within the dead band
        ((1.0, 1.0), (1.2, 0.8)),  # a message more or less in a 5 s window
    ],
)
def test_a_steady_flow_writes_nothing_more(
    shown: tuple[float, float], now: tuple[float, float]
) -> None:
    assert not moved(shown, now, window=5.0)


def test_the_dead_band_is_a_share_of_what_is_shown() -> None:
    busy = 1000.0
    assert not moved((busy,), (busy * (1 + DEADBAND) - 0.1,), window=5.0)
    assert moved((busy,), (busy * (1 + DEADBAND) + 0.1,), window=5.0)
