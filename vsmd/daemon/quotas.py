"""Quotas in two layers.

Hard: rlimits set in the VSM process right after fork, before any agent code runs. They sit at
twice the soft quota (memory: the runtime's own size plus twice the quota) so the soft layer acts
first and the hard one stops a runaway.
Soft: a psutil sampler over every running VSM (its whole process tree) that acts only after N
violations in a row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

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
    """Reads rss, cpu, fds, threads and child processes of every running VSM.

    Memory and cpu are summed over the VSM's whole process tree: an agent's subprocesses count
    against its quotas as much as the agent itself.
    """

    def __init__(self, strikes_needed: int, tree_refresh: float = TREE_REFRESH) -> None:
        self.strikes_needed = strikes_needed
        self.tree_refresh = tree_refresh
        # Per VSM, its processes by pid, kept across samples: cpu_percent measures from an
        # object's previous call, so a fresh object each time would always read 0.
        self._trees: dict[str, dict[int, psutil.Process]] = {}
        self._strikes: dict[tuple[str, str], int] = {}
        self._children: dict[int, list[int]] = {}
        self._children_at: float | None = None

    def _family(self, vsm_id: str, pid: int) -> list[psutil.Process]:
        """The VSM's process, then its descendants; raises psutil.Error if the VSM is gone."""
        known = self._trees.get(vsm_id, {})
        root = known.get(pid)
        if root is None:  # new, or restarted under a new pid
            root = psutil.Process(pid)
            root.cpu_percent(None)  # the first reading only starts the window
        family = {pid: root}
        for child in _descendants(self._children, pid):
            proc = known.get(child)
            if proc is None:
                try:
                    proc = psutil.Process(child)
                    proc.cpu_percent(None)
                except psutil.Error:
                    continue  # exited since the scan
            family[child] = proc
        self._trees[vsm_id] = family  # what left the tree is dropped here
        return list(family.values())

    def _refresh_children(self) -> None:
        now = time.monotonic()
        if self._children_at is None or now - self._children_at >= self.tree_refresh:
            self._children = _children_map()
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
            with contextlib.suppress(psutil.Error):
                family = self._family(t.vsm_id, t.pid)
                m = self._read(family, t.policy, len(self._children.get(t.pid, ())))
                metrics[t.vsm_id] = m
                violations.extend(self._judge(t, m))
        return metrics, violations

    @staticmethod
    def _read(family: list[psutil.Process], policy: Policy, procs: int) -> dict[str, Any]:
        root = family[0]
        rss, cpu = 0, 0.0
        for proc in family:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    cpu += proc.cpu_percent(None)
            except psutil.Error:
                if proc is root:
                    raise
                # A subprocess that ended since the scan: it holds nothing any more.
        m: dict[str, Any] = {
            "rss_mb": round(rss / 2**20, 1),
            "cpu_percent": round(cpu, 1),
            "threads": root.num_threads(),
        }
        if policy.max_fds:
            m["fds"] = root.num_fds()
        if policy.max_procs:
            m["procs"] = procs
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


def _children_map() -> dict[int, list[int]]:
    """Child pids of every pid, from one pass over /proc.

    psutil's ``children(recursive=True)`` makes this same pass on every call: once per VSM, a
    sample of 1,000 VSMs would read the whole process table 1,000 times.
    """
    out: dict[int, list[int]] = {}
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, the last ")" ends it.
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(pid)
    return out


def _descendants(children: dict[int, list[int]], pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out
