"""Admission control: token buckets for spawn rates and a floor on the host's free memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from vsmd.config import Config
from vsmd.errors import Throttled


class TokenBucket:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self.tokens -= 1


class Admission:
    """Decides whether a spawn may go ahead now; refuses with THROTTLED and ``retry_after``."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        available_mb: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.overall = TokenBucket(config.spawn_rate, config.spawn_burst, clock)
        self.per_parent: dict[str, TokenBucket] = {}
        self._available_mb = available_mb or (lambda: psutil.virtual_memory().available / 2**20)

    def admit(self, parent_id: str | None) -> None:
        bucket = None
        if parent_id is not None:
            # Per-parent buckets hold runaway agents (a fork bomb) to their own share.
            bucket = self.per_parent.get(parent_id)
            if bucket is None:
                bucket = TokenBucket(
                    self.config.parent_spawn_rate, self.config.parent_spawn_burst, self.clock
                )
                self.per_parent[parent_id] = bucket
        waits = [self.overall.wait_time(), bucket.wait_time() if bucket else 0.0]
        if max(waits) > 0:
            which = "spawn rate of this parent" if waits[1] >= waits[0] else "overall spawn rate"
            raise Throttled(
                f"{which} exceeded; retry in {max(waits):.3f} s",
                max(waits),
                limit="parent_spawn_rate" if waits[1] >= waits[0] else "spawn_rate",
            )
        free = self._available_mb()
        if free < self.config.min_available_mb:
            raise Throttled(
                f"host memory is low: {free:.0f} MiB available < min_available_mb "
                f"{self.config.min_available_mb}",
                1.0,
                limit="min_available_mb",
                available_mb=round(free),
                min_available_mb=self.config.min_available_mb,
            )
        self.overall.take()
        if bucket is not None:
            bucket.take()

    def forget(self, parent_id: str) -> None:
        self.per_parent.pop(parent_id, None)
