"""A circuit breaker for calls to one upstream: after ``threshold`` failed calls in a row it
opens and refuses calls for ``cooldown`` seconds, then half-opens and lets one trial call
through, whose outcome closes it or opens it for another cool-down.

Pure: no I/O, clocks injected, so every edge has a unit test (tests/unit/test_agent_http_parts.py).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Circuit(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Event(enum.Enum):
    TRIPPED = "tripped"  # the threshold-th failed call in a row
    COOLED = "cooled"  # the cool-down since opening is over
    TRIAL_OK = "trial_ok"
    TRIAL_FAILED = "trial_failed"


def transition(state: Circuit, event: Event) -> Circuit:
    """The one place the circuit changes state; an event with no edge leaves it as it is."""
    # CLOSED -> OPEN: the upstream failed `threshold` calls in a row: stop adding load to it.
    if state is Circuit.CLOSED and event is Event.TRIPPED:
        return Circuit.OPEN
    # OPEN -> HALF_OPEN: the cool-down is over: one call may find out whether it is back.
    if state is Circuit.OPEN and event is Event.COOLED:
        return Circuit.HALF_OPEN
    # HALF_OPEN -> CLOSED: the trial worked: calls flow again.
    if state is Circuit.HALF_OPEN and event is Event.TRIAL_OK:
        return Circuit.CLOSED
    # HALF_OPEN -> OPEN: the trial failed: another full cool-down.
    if state is Circuit.HALF_OPEN and event is Event.TRIAL_FAILED:
        return Circuit.OPEN
    return state


@dataclass(frozen=True)
class Ticket:
    """An admitted call; ``trial`` when it is the one call a half-open circuit lets through."""

    trial: bool


@dataclass
class CircuitBreaker:
    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic  # for the cool-down: immune to clock steps
    wall: Callable[[], float] = time.time  # for what operators read (opened_at)
    state: Circuit = Circuit.CLOSED
    failures: int = 0  # failed calls in a row
    opened_at: float | None = None  # wall time it last opened
    _opened: float = field(default=0.0, repr=False)  # the same on `clock`
    _trial_out: bool = field(default=False, repr=False)

    def current(self) -> Circuit:
        """The state now: an open circuit whose cool-down is over is half-open."""
        if self.state is Circuit.OPEN and self.clock() - self._opened >= self.cooldown:
            self.state = transition(self.state, Event.COOLED)
        return self.state

    def admit(self) -> Ticket | float:
        """A ticket for a call, or the seconds to wait before asking again."""
        state = self.current()
        if state is Circuit.CLOSED:
            return Ticket(trial=False)
        if state is Circuit.OPEN:
            return max(0.0, self.cooldown - (self.clock() - self._opened))
        if self._trial_out:
            # One trial at a time: a second caller would load an upstream that may be down.
            return min(1.0, self.cooldown)
        self._trial_out = True
        return Ticket(trial=True)

    def record(self, ticket: Ticket, ok: bool) -> None:
        """The outcome of an admitted call."""
        if ticket.trial:
            self._trial_out = False
            self.failures = 0 if ok else self.failures + 1
            self.state = transition(self.state, Event.TRIAL_OK if ok else Event.TRIAL_FAILED)
            if self.state is Circuit.OPEN:
                self._open()
            return
        if self.state is not Circuit.CLOSED:
            return  # a call admitted before the circuit opened: the trial decides, not it
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.state = transition(self.state, Event.TRIPPED)
            self._open()

    def abandon(self, ticket: Ticket) -> None:
        """An admitted call that ended without an outcome (refused before it was sent,
        cancelled): a trial's place is free again."""
        if ticket.trial:
            self._trial_out = False

    def _open(self) -> None:
        self._opened = self.clock()
        self.opened_at = round(self.wall(), 3)

    def snapshot(self) -> dict[str, Any]:
        """What the state says: ``{"state", "failures", "opened_at"}``."""
        return {
            "state": self.current().value,
            "failures": self.failures,
            "opened_at": self.opened_at,
        }
