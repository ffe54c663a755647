"""Token buckets, one per caller: ``rate`` calls per second on average, ``burst`` at once.

Pure: the clock is injected. The buckets are kept for the most recent ``max_callers`` callers
only, so a stream of new sender ids cannot grow the VSM's memory; a caller that was dropped
comes back with a full bucket, which costs at most one burst.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_CALLERS = 1024


@dataclass
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # most tokens held
    tokens: float
    stamp: float  # clock time of the last refill

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = MAX_CALLERS,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_callers
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, caller: str) -> float:
        """0.0 when ``caller`` may call now, else the seconds until it may."""
        now = self._clock()
        bucket = self._buckets.pop(caller, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, float(self.burst), now)
        self._buckets[caller] = bucket  # the most recent last
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
