"""The deadline heap, on a fake clock."""

from __future__ import annotations

import functools
import time

from tests.unit.fakes import FakeClock
from vsmd.daemon.timers import Timers


def test_runs_in_deadline_order(timers: Timers, clock: FakeClock) -> None:
    ran: list[str] = []
    timers.call_later(5.0, lambda: ran.append("c"))
    timers.call_later(1.0, lambda: ran.append("a"))
    timers.call_later(3.0, lambda: ran.append("b"))
    clock.advance(10.0)
    timers.run_due()
    assert ran == ["a", "b", "c"]


def test_same_deadline_runs_in_scheduling_order(timers: Timers, clock: FakeClock) -> None:
    ran: list[int] = []
    for i in range(5):
        timers.call_later(2.0, functools.partial(ran.append, i))
    clock.advance(2.0)
    timers.run_due()
    assert ran == [0, 1, 2, 3, 4]


def test_only_due_timers_run(timers: Timers, clock: FakeClock) -> None:
    ran: list[str] = []
    timers.call_later(1.0, lambda: ran.append("a"))
    timers.call_later(3.0, lambda: ran.append("b"))
    timers.run_due()
    assert ran == []
    clock.advance(0.999)
    timers.run_due()
    assert ran == []
    clock.advance(0.001)  # exactly at the deadline
    timers.run_due()
    assert ran == ["a"]
    clock.advance(1.5)
    timers.run_due()
    assert ran == ["a"]
    clock.advance(0.5)
    timers.run_due()
    assert ran == ["a", "b"]
    clock.advance(100.0)
    timers.run_due()
    assert ran == ["a", "b"]  # each runs once


def test_cancel(timers: Timers, clock: FakeClock) -> None:
    ran: list[str] = []
    first = timers.call_later(1.0, lambda: ran.append("a"))
    timers.call_later(2.0, lambda: ran.append("b"))
    first.cancel()
    assert first.cancelled
    clock.advance(5.0)
    timers.run_due()
    assert ran == ["b"]


def test_negative_delay_is_due_now(timers: Timers) -> None:
    ran: list[str] = []
    timers.call_later(-5.0, lambda: ran.append("now"))
    assert timers.next_delay(1.0) == 0.0
    timers.run_due()
    assert ran == ["now"]


def test_next_delay(timers: Timers, clock: FakeClock) -> None:
    assert timers.next_delay(1.0) == 1.0  # nothing scheduled: the cap
    timers.call_later(5.0, lambda: None)
    assert timers.next_delay(1.0) == 1.0  # capped
    assert timers.next_delay(10.0) == 5.0
    clock.advance(4.0)
    assert timers.next_delay(10.0) == 1.0
    clock.advance(3.0)
    assert timers.next_delay(10.0) == 0.0  # overdue, never negative


def test_next_delay_skips_cancelled_timers(timers: Timers) -> None:
    early = timers.call_later(1.0, lambda: None)
    timers.call_later(4.0, lambda: None)
    early.cancel()
    assert timers.next_delay(10.0) == 4.0


def test_next_delay_is_the_cap_when_all_are_cancelled(timers: Timers) -> None:
    timers.call_later(1.0, lambda: None).cancel()
    assert timers.next_delay(7.0) == 7.0


def test_timer_scheduled_from_a_callback(timers: Timers, clock: FakeClock) -> None:
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        timers.call_later(1.0, lambda: ran.append("second"))

    timers.call_later(1.0, first)
    clock.advance(1.0)
    timers.run_due()
    assert ran == ["first"]  # the new one is not due yet
    clock.advance(1.0)
    timers.run_due()
    assert ran == ["first", "second"]


def test_cancel_from_a_callback(timers: Timers, clock: FakeClock) -> None:
    ran: list[str] = []
    later = timers.call_later(2.0, lambda: ran.append("later"))
    timers.call_later(1.0, later.cancel)
    clock.advance(3.0)
    timers.run_due()
    assert ran == []


def test_default_clock_is_monotonic() -> None:
    assert Timers().clock is time.monotonic
