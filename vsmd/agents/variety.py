"""Variety, in Ashby's sense: how many distinct states a sensor has reported lately.

A reading's state is its value with every number rounded to ``resolution`` (none: exact), so
a noisy gauge can be read as a handful of levels. The variety is the number of distinct
states among the last ``window`` readings: it rises when the world a sensor watches starts to
move and falls back when it settles, and it is bounded by the window, so it costs a fixed
amount of memory whatever the source says.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, deque
from typing import Any

import orjson


def quantize(value: Any, resolution: float | None) -> Any:
    """``value`` with every number replaced by its multiple of ``resolution`` (an int: no
    float noise), recursively; booleans, strings and None as they are."""
    if resolution is None or isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float):
        return round(value / resolution) if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): quantize(v, resolution) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [quantize(v, resolution) for v in value]
    return str(value)


def state_key(value: Any, resolution: float | None) -> bytes:
    """A short digest of the value's state (key order in objects does not matter)."""
    try:
        raw = orjson.dumps(quantize(value, resolution), option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON (a sensor's values always are; this is a guard)
        raw = repr(value).encode()
    return hashlib.blake2b(raw, digest_size=8).digest()


class Variety:
    def __init__(self, window: int, resolution: float | None = None) -> None:
        self.window = window
        self.resolution = resolution
        self._recent: deque[bytes] = deque()
        self._counts: Counter[bytes] = Counter()

    def observe(self, value: Any) -> int:
        """Take a reading; the variety after it."""
        key = state_key(value, self.resolution)
        self._recent.append(key)
        self._counts[key] += 1
        if len(self._recent) > self.window:
            old = self._recent.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        return len(self._counts)

    @property
    def distinct(self) -> int:
        return len(self._counts)
