"""A heap of deadlines for the daemon's single-threaded loop."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Timer:
    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self.clock = clock

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(self.clock() + max(0.0, delay), next(self._seq), fn)
        heapq.heappush(self._heap, timer)
        return timer

    def next_delay(self, cap: float) -> float:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return cap
        return max(0.0, min(cap, self._heap[0].when - self.clock()))

    def run_due(self) -> None:
        now = self.clock()
        while self._heap and (self._heap[0].cancelled or self._heap[0].when <= now):
            timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.fn()
