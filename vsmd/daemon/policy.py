"""Restart decisions: policy, intensity (OTP's max_restarts in max_seconds) and backoff."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

from vsmd.config import Config


def should_restart(policy: str, code: int | None, sig: int | None) -> bool:
    """permanent: always; transient: only after an abnormal exit; temporary: never."""
    abnormal = code != 0 or sig is not None
    return policy == "permanent" or (policy == "transient" and abnormal)


@dataclass
class RestartHistory:
    """One VSM's recent crashes."""

    times: collections.deque[float] = field(default_factory=collections.deque)
    consecutive: int = 0

    def record(self, now: float, uptime: float | None, config: Config) -> float | None:
        """Note a crash; the delay before the restart, or None when intensity is exceeded."""
        if uptime is not None and uptime >= config.stable_uptime:
            self.consecutive = 0  # it ran long enough to count as healthy: start over
        self.consecutive += 1
        self.times.append(now)
        while self.times and now - self.times[0] > config.max_seconds:
            self.times.popleft()
        if len(self.times) > config.max_restarts:
            return None
        # Cap the exponent too: 2**1024 does not fit a float.
        base = config.backoff_initial * (2 ** min(self.consecutive - 1, 64))
        # Jitter spreads the restarts of VSMs that crashed together (say, on a broker outage).
        # It goes on before the cap: backoff_max is a promise to the operator, never exceeded.
        delay: float = min(config.backoff_max, base * random.uniform(1.0, 1.25))
        return delay

    def clear(self) -> None:
        self.times.clear()
        self.consecutive = 0
