"""Quotas in two layers.

Hard: rlimits set in the VSM process right after fork, before any agent code runs. They sit at
twice the soft quota (memory: the runtime's own size plus twice the quota) so the soft layer acts
first and the hard one stops a runaway.
Soft: a psutil sampler over every running VSM that acts only after N violations in a row.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from vsmd.protocol import Policy


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def apply_rlimits(policy: dict[str, Any]) -> None:
    """In the child, before the agent exists."""
    memory_mb = policy.get("memory_mb")
    if memory_mb:
        limit = _vm_size() + 2 * int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    max_fds = policy.get("max_fds")
    if max_fds:
        # The runtime itself needs a few dozen descriptors (broker socket, pipes).
        limit = max(2 * int(max_fds), 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


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
    """Reads rss, cpu, fds, threads and child processes of every running VSM."""

    def __init__(self, strikes_needed: int) -> None:
        self.strikes_needed = strikes_needed
        self._procs: dict[str, psutil.Process] = {}
        self._strikes: dict[tuple[str, str], int] = {}

    def _proc(self, vsm_id: str, pid: int) -> psutil.Process:
        proc = self._procs.get(vsm_id)
        if proc is None or proc.pid != pid:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # the first reading only starts the window
            self._procs[vsm_id] = proc
        return proc

    def forget(self, vsm_id: str) -> None:
        self._procs.pop(vsm_id, None)
        for key in [k for k in self._strikes if k[0] == vsm_id]:
            del self._strikes[key]

    def sample(
        self, targets: Iterable[Sample]
    ) -> tuple[dict[str, dict[str, Any]], list[Violation]]:
        targets = list(targets)
        children = _child_counts() if any(t.policy.max_procs for t in targets) else {}
        metrics: dict[str, dict[str, Any]] = {}
        violations: list[Violation] = []
        for t in targets:
            with contextlib.suppress(psutil.Error):
                m = self._read(self._proc(t.vsm_id, t.pid), t.policy, children)
                metrics[t.vsm_id] = m
                violations.extend(self._judge(t, m))
        return metrics, violations

    @staticmethod
    def _read(proc: psutil.Process, policy: Policy, children: dict[int, int]) -> dict[str, Any]:
        with proc.oneshot():
            m: dict[str, Any] = {
                "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                "cpu_percent": round(proc.cpu_percent(None), 1),
                "threads": proc.num_threads(),
            }
            if policy.max_fds:
                m["fds"] = proc.num_fds()
            if policy.max_procs:
                m["procs"] = children.get(proc.pid, 0)
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


def _child_counts() -> dict[int, int]:
    """Child processes per pid, from one pass over the process table."""
    counts: dict[int, int] = {}
    for p in psutil.process_iter(["ppid"]):
        ppid = p.info["ppid"]
        if ppid:
            counts[ppid] = counts.get(ppid, 0) + 1
    return counts
