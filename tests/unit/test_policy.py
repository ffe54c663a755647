"""Restart decisions: the policy table, intensity and capped exponential backoff with jitter."""

from __future__ import annotations

import random
import signal

import pytest

from vsmd.config import Config
from vsmd.daemon.policy import RestartHistory, should_restart

# backoff_initial 1 s doubling to a cap of 8 s; more than 3 crashes in 100 s is too many.
CONFIG = Config(
    backoff_initial=1.0, backoff_max=8.0, max_restarts=3, max_seconds=100.0, stable_uptime=10.0
)
KILL = int(signal.SIGKILL)


@pytest.mark.parametrize(
    ("policy", "code", "sig", "expected"),
    [
        ("permanent", 0, None, True),
        ("permanent", 1, None, True),
        ("permanent", None, KILL, True),
        ("transient", 0, None, False),
        ("transient", 1, None, True),
        ("transient", None, KILL, True),
        ("temporary", 0, None, False),
        ("temporary", 1, None, False),
        ("temporary", None, KILL, False),
    ],
)
def test_should_restart_table(
    policy: str, code: int | None, sig: int | None, expected: bool
) -> None:
    assert should_restart(policy, code, sig) is expected


def test_a_failed_fork_is_abnormal() -> None:
    # No exit code and no signal: the process never ran (a fork failure on restart).
    assert should_restart("transient", None, None) is True


@pytest.fixture
def upper_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """random.uniform(a, b) returns b: the largest jitter the policy may apply."""
    monkeypatch.setattr(random, "uniform", lambda _a, b: b)


def crashes(history: RestartHistory, times: list[float], uptime: float | None = 1.0) -> list[float]:
    out: list[float] = []
    for now in times:
        delay = history.record(now, uptime, CONFIG)
        assert delay is not None, f"intensity exceeded at {now}"
        out.append(delay)
    return out


def test_delays_double_and_are_capped_with_jitter_in_range() -> None:
    random.seed(1234)
    config = Config(backoff_initial=1.0, backoff_max=8.0, max_restarts=100, max_seconds=1.0)
    history = RestartHistory()
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for i, base in enumerate(bases):
        # 10 s apart, so the 1 s intensity window never holds two crashes.
        delay = history.record(10.0 * i, 1.0, config)
        assert delay is not None
        assert base <= delay <= min(base * 1.25, config.backoff_max), (i, delay)
    assert history.consecutive == len(bases)


def test_delays_with_the_largest_jitter(upper_jitter: None) -> None:
    config = Config(backoff_initial=0.5, backoff_max=3.0, max_restarts=100, max_seconds=1.0)
    history = RestartHistory()
    delays = [history.record(10.0 * i, None, config) for i in range(6)]
    assert delays == [0.625, 1.25, 2.5, 3.0, 3.0, 3.0]


def test_jitter_never_takes_a_delay_past_backoff_max(upper_jitter: None) -> None:
    # 2.5 s is under the 3 s cap, but 2.5 s with 25 % jitter is not: the cap wins.
    config = Config(backoff_initial=1.25, backoff_max=3.0, max_restarts=100, max_seconds=1.0)
    history = RestartHistory()
    delays = [history.record(10.0 * i, None, config) for i in range(4)]
    assert delays == [1.5625, 3.0, 3.0, 3.0]
    assert max(d for d in delays if d is not None) <= config.backoff_max


def test_delays_with_the_smallest_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda a, _b: a)
    config = Config(backoff_initial=0.5, backoff_max=3.0, max_restarts=100, max_seconds=1.0)
    history = RestartHistory()
    assert [history.record(10.0 * i, None, config) for i in range(5)] == [0.5, 1, 2, 3, 3]


def test_intensity_exceeded_after_max_restarts_within_max_seconds(upper_jitter: None) -> None:
    history = RestartHistory()
    assert crashes(history, [0.0, 10.0, 20.0]) == [1.25, 2.5, 5.0]
    assert history.record(99.0, 1.0, CONFIG) is None  # the 4th within 100 s
    assert list(history.times) == [0.0, 10.0, 20.0, 99.0]


def test_crashes_outside_the_window_are_forgotten(upper_jitter: None) -> None:
    history = RestartHistory()
    crashes(history, [0.0, 10.0, 20.0])
    # 100.5 s after the first: it falls out of the window, three remain, still allowed.
    assert history.record(100.5, 1.0, CONFIG) is not None
    assert list(history.times) == [10.0, 20.0, 100.5]
    assert history.record(110.0, 1.0, CONFIG) is None  # 10, 20, 100.5 and 110: too many


def test_exactly_max_seconds_apart_still_counts(upper_jitter: None) -> None:
    history = RestartHistory()
    crashes(history, [0.0, 10.0, 20.0])
    assert history.record(100.0, 1.0, CONFIG) is None  # the first is exactly 100 s old


def test_consecutive_count_resets_after_stable_uptime(upper_jitter: None) -> None:
    history = RestartHistory()
    assert crashes(history, [0.0, 10.0], uptime=9.9) == [1.25, 2.5]
    assert history.consecutive == 2
    # It ran for stable_uptime: this crash starts the backoff over.
    assert crashes(history, [200.0], uptime=10.0) == [1.25]
    assert history.consecutive == 1
    assert crashes(history, [210.0], uptime=0.5) == [2.5]


def test_an_unknown_uptime_does_not_reset(upper_jitter: None) -> None:
    history = RestartHistory()
    assert crashes(history, [0.0, 10.0, 20.0], uptime=None) == [1.25, 2.5, 5.0]


def test_clear_forgets_everything(upper_jitter: None) -> None:
    history = RestartHistory()
    crashes(history, [0.0, 1.0, 2.0])
    history.clear()
    assert (list(history.times), history.consecutive) == ([], 0)
    assert crashes(history, [3.0, 4.0, 5.0]) == [1.25, 2.5, 5.0]


def test_a_long_crash_loop_under_the_intensity_limit_keeps_the_cap() -> None:
    config = Config()  # 5 restarts in 60 s, backoff capped at 30 s, stable after 10 s
    history = RestartHistory()
    for i in range(1100):
        # Each crash comes 1 s after its restart, which waited out the capped delay.
        delay = history.record(31.0 * i, 1.0, config)
        assert delay is not None
        assert delay <= config.backoff_max
