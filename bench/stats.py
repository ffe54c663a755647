"""Summaries of repeated measurements and the result store that the report reads."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {}
    return {
        "n": float(len(samples)),
        "median": statistics.median(samples),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
    }


@dataclass
class Figure:
    """One measured quantity: every sample of every repeat, in ``unit``."""

    key: str
    label: str
    unit: str
    samples: list[float]
    n: int | None = None  # how many VSMs / processes the figure is about
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "n": self.n,
            "note": self.note,
            "samples": [round(s, 6) for s in self.samples],
            "summary": {k: round(v, 6) for k, v in summarize(self.samples).items()},
        }


@dataclass
class Results:
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(
        self,
        key: str,
        label: str,
        unit: str,
        samples: Sequence[float],
        n: int | None = None,
        note: str = "",
    ) -> None:
        if not samples:
            return
        fig = self.figures.get(key)
        if fig is None:
            self.figures[key] = Figure(key, label, unit, list(samples), n, note)
        else:
            fig.samples.extend(samples)

    def median(self, key: str) -> float | None:
        fig = self.figures.get(key)
        return statistics.median(fig.samples) if fig and fig.samples else None

    def p99(self, key: str) -> float | None:
        fig = self.figures.get(key)
        return percentile(fig.samples, 99) if fig and fig.samples else None

    def fail(self, what: str) -> None:
        print(f"bench: FAILED: {what}", flush=True)
        self.failures.append(what)

    def note(self, what: str) -> None:
        print(f"bench: note: {what}", flush=True)
        self.notes.append(what)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def log(msg: str) -> None:
    print(f"bench [{time.strftime('%H:%M:%S')}] {msg}", flush=True)
