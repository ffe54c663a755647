"""Where the daemon's time goes in a spawn, step by step: a count and two totals per step.

Every step runs on the daemon's loop thread. Per step: wall time (``time.perf_counter``) and the
loop thread's CPU time (``time.thread_time``). In a burst the VSMs starting take the cores, and
a step the scheduler interrupts counts that wait in its wall time, not in its CPU time.
``thread_time`` is a system call (about 0.9 µs, ten times ``perf_counter``): some 10 µs per
spawn, a fraction of a percent of the daemon's CPU per spawn.

A step may run inside another (the reply to a spawn is sent from within the handling of the
VSM's ready report): its time counts under its own name only, so the steps add up to the time
spent in them without counting anything twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, get_args

Step = Literal["admission", "journal", "cgroups", "fork_request", "ready", "reply", "events"]
STEPS: tuple[Step, ...] = get_args(Step)

# What ``begin`` hands out: wall and CPU clock when the step began, and the wall and CPU time
# all steps had taken by then.
Began = tuple[float, float, float, float]
Clock = Callable[[], float]


class StepTimes:
    """Owned by the spawn manager and changed on the loop thread only."""

    def __init__(self, clock: Clock = time.perf_counter, cpu: Clock = time.thread_time) -> None:
        self._clock = clock
        self._cpu = cpu
        self.counts: dict[Step, int] = dict.fromkeys(STEPS, 0)
        self.seconds: dict[Step, float] = dict.fromkeys(STEPS, 0.0)
        self.cpu_seconds: dict[Step, float] = dict.fromkeys(STEPS, 0.0)
        # Every step's own time so far: what ended inside a step is not that step's.
        self._spent = 0.0
        self._cpu_spent = 0.0

    def begin(self) -> Began:
        return self._clock(), self._cpu(), self._spent, self._cpu_spent

    def end(self, step: Step, began: Began) -> Began:
        """Count one ``step`` begun at ``began``; the next step may begin with what it returns."""
        now, cpu_now = self._clock(), self._cpu()
        started, cpu_started, spent, cpu_spent = began
        own = now - started - (self._spent - spent)
        cpu_own = cpu_now - cpu_started - (self._cpu_spent - cpu_spent)
        self._spent += own
        self._cpu_spent += cpu_own
        self.counts[step] += 1
        self.seconds[step] += own
        self.cpu_seconds[step] += cpu_own
        return now, cpu_now, self._spent, self._cpu_spent

    def snapshot(self) -> dict[str, dict[str, float]]:
        """A copy for the metrics endpoint and the ``ping`` reply: count, seconds, CPU seconds."""
        return {
            s: {
                "count": self.counts[s],
                "seconds": self.seconds[s],
                "cpu_seconds": self.cpu_seconds[s],
            }
            for s in STEPS
        }
