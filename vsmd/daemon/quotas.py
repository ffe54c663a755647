"""Quotas in two layers.

Hard: rlimits set in the VSM process right after fork, before any agent code runs. They sit at
twice the soft quota (memory: the runtime's own size plus twice the quota) so the soft layer acts
first and the hard one stops a runaway.
Soft: a sampler over every running VSM (its whole process tree) that acts only after N
violations in a row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vsmd.daemon import procstat
from vsmd.protocol import Policy

# How old the scan of the process table may be. A scan reads every process on the host, so it
# is made at most this often, not on every slice of the sampling pass; a new subprocess counts
# from the next scan on.
TREE_REFRESH = 2.0


@dataclass(frozen=True)
class Violation:
    vsm_id: str
    metric: str
    message: str
    action: str


@dataclass
class Sample:
    vsm_id: str
    pid: int
    policy: Policy
    action: str


class Sampler:
    """Reads rss, cpu, threads, fds and child processes of every running VSM.

    Memory and cpu are summed over the VSM's whole process tree: an agent's subprocesses count
    against its quotas as much as the agent itself.
    """

    def __init__(self, strikes_needed: int, tree_refresh: float = TREE_REFRESH) -> None:
        self.strikes_needed = strikes_needed
        self.tree_refresh = tree_refresh
        # Per VSM, per pid of its tree: (cpu seconds, monotonic time) of the last reading. cpu %
        # is measured from there, so a pid first seen reads 0 and only starts its window.
        self._trees: dict[str, dict[int, tuple[float, float]]] = {}
        self._strikes: dict[tuple[str, str], int] = {}
        self._children: dict[int, list[int]] = {}
        self._children_at: float | None = None

    def _refresh_children(self) -> None:
        now = time.monotonic()
        if self._children_at is None or now - self._children_at >= self.tree_refresh:
            self._children = procstat.children_map()
            self._children_at = now

    def forget(self, vsm_id: str) -> None:
        self._trees.pop(vsm_id, None)
        for key in [k for k in self._strikes if k[0] == vsm_id]:
            del self._strikes[key]

    def sample(
        self, targets: Iterable[Sample]
    ) -> tuple[dict[str, dict[str, Any]], list[Violation]]:
        self._refresh_children()
        metrics: dict[str, dict[str, Any]] = {}
        violations: list[Violation] = []
        for t in targets:
            with contextlib.suppress(procstat.ProcessGone):
                m = self._read(t.vsm_id, t.pid, t.policy)
                metrics[t.vsm_id] = m
                violations.extend(self._judge(t, m))
        return metrics, violations

    def _read(self, vsm_id: str, pid: int, policy: Policy) -> dict[str, Any]:
        """Raises ProcessGone if the VSM's own process is gone."""
        last = self._trees.get(vsm_id, {})
        now = time.monotonic()
        root = procstat.read(pid)
        seen = {pid: (root.cpu_seconds, now)}
        rss, cpu = root.rss, _percent(last.get(pid), root.cpu_seconds, now)
        for child in _descendants(self._children, pid):
            try:
                st = procstat.read(child)
            except procstat.ProcessGone:
                continue  # a subprocess that ended since the scan holds nothing any more
            seen[child] = (st.cpu_seconds, now)
            rss += st.rss
            cpu += _percent(last.get(child), st.cpu_seconds, now)
        self._trees[vsm_id] = seen  # what left the tree is dropped here
        m: dict[str, Any] = {
            "rss_mb": round(rss / 2**20, 1),
            "cpu_percent": round(cpu, 1),
            "threads": root.threads,
        }
        if policy.max_fds:
            m["fds"] = procstat.open_fds(pid)
        if policy.max_procs:
            m["procs"] = len(self._children.get(pid, ()))
        return m

    def _judge(self, t: Sample, m: dict[str, Any]) -> list[Violation]:
        checks = [
            ("memory", "memory", m["rss_mb"], t.policy.memory_mb, "MiB"),
            ("cpu", "cpu", m["cpu_percent"], t.policy.cpu_percent, "%"),
            ("fds", "open files", m.get("fds"), t.policy.max_fds, ""),
            ("procs", "child processes", m.get("procs"), t.policy.max_procs, ""),
        ]
        out = []
        for metric, label, value, limit, unit in checks:
            key = (t.vsm_id, metric)
            if limit is None or value is None or value <= limit:
                self._strikes.pop(key, None)
                continue
            strikes = self._strikes.get(key, 0) + 1
            self._strikes[key] = strikes
            if strikes >= self.strikes_needed:
                self._strikes.pop(key)
                sep = " " if unit == "MiB" else ""
                out.append(
                    Violation(
                        t.vsm_id,
                        metric,
                        f"{label} quota exceeded: {value:g}{sep}{unit} > {limit:g}{sep}{unit} "
                        f"for {strikes} samples",
                        t.action,
                    )
                )
        return out


def _percent(last: tuple[float, float] | None, cpu_seconds: float, now: float) -> float:
    """Percent of one core since the last reading (as psutil's cpu_percent: a busy process with
    two threads reads 200)."""
    if last is None or now <= last[1]:
        return 0.0
    return max(0.0, (cpu_seconds - last[0]) / (now - last[1]) * 100.0)


def _descendants(children: dict[int, list[int]], pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out
