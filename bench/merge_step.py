"""Idle memory with ``memory_merge``: two daemons side by side, both with the MCP server (the
default), one with ``memory_merge = true``, while the kernel's KSM runs. USS and PSS of every
VSM of each, and KSM's CPU, before and after each VSM has served one MCP session.

KSM is a setting of the whole machine: the step switches it on for its window only and puts
every value back as it found it; it needs root and a kernel with per-process KSM (6.4+)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from bench import suite
from bench import vsmd_figs as figs
from bench.mcp_step import AGENTS, one_session_each
from bench.resources import memory
from bench.schedstat import task_seconds
from bench.stats import log
from bench.vsmd_proc import VsmdProc

PREFIX = "merge"
KSM = Path("/sys/kernel/mm/ksm")
# Pages KSM scans per wake-up (every SLEEP_MS): 100,000 a second, 20 times the kernel's
# default, so that a pass over 200 VSMs takes seconds, not minutes. Reported with the figures.
PAGES_TO_SCAN = 2000
SLEEP_MS = 20
MIN_PASSES = 4  # full KSM passes before USS may count as settled (see _settle)
SETTLED_MIB = 0.05  # median USS moving less than this over one full pass: settled


def unavailable() -> str | None:
    """Why the step cannot run here, or None."""
    if os.geteuid() != 0:
        return "KSM's settings need root"
    if not (KSM / "run").exists() or not Path("/proc/self/ksm_stat").exists():
        return "this kernel has no per-process KSM (Linux 6.4+)"
    return None


def _read(name: str) -> str:
    return (KSM / name).read_text().strip()


def ksmd_seconds() -> float:
    """On-CPU time of the kernel's ksmd thread."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ksmd":
                return task_seconds(int(pid)) or 0.0
    return 0.0


@contextlib.contextmanager
def ksm_running() -> Iterator[None]:
    saved = {name: _read(name) for name in ("pages_to_scan", "sleep_millisecs", "run")}
    try:
        (KSM / "pages_to_scan").write_text(str(PAGES_TO_SCAN))
        (KSM / "sleep_millisecs").write_text(str(SLEEP_MS))
        (KSM / "run").write_text("1")
        yield
    finally:
        # "run" last, and never "2" (that would unmerge every page of the machine).
        for name, value in saved.items():
            with contextlib.suppress(OSError):
                (KSM / name).write_text(value)


def _uss(d: VsmdProc) -> tuple[list[float], float]:
    """USS of every VSM (MiB) and their PSS summed (MiB): what they cost the machine."""
    mem = memory(d, None)
    return mem["vsm_uss"], sum(mem["vsm_pss"])


def _settle(ctx: suite.Ctx, merged: VsmdProc, n: int, timeout: float) -> float:
    """Wait until the merged daemon's median USS holds still over one full KSM pass. KSM
    merges a page on the pass after the one that first saw it unchanged, so the passes before
    that change nothing: compare from the fourth pass after the call on. Seconds."""
    start = time.monotonic()
    scans = first = int(_read("full_scans"))
    last: float | None = None
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = int(_read("full_scans"))
        if now == scans:
            continue
        scans = now
        if now - first < MIN_PASSES - 1:
            continue
        uss, _pss = _uss(merged)
        median = statistics.median(uss) if len(uss) == n else None
        if median is not None and last is not None and abs(median - last) < SETTLED_MIB:
            return time.monotonic() - start
        last = median
    ctx.res.note(f"memory_merge: USS still moving after {timeout:g} s; figures taken then")
    return time.monotonic() - start


def run_merge(ctx: suite.Ctx) -> None:
    reason = unavailable()
    if reason is not None:
        ctx.res.note(f"memory_merge not measured: {reason}")
        return
    n, res = ctx.plan.mcp_vsms, ctx.res
    timeout = 60.0 + 0.5 * n
    settle_for = 60.0 + 0.6 * n
    # KSM on before the daemons start, so the merging one does not warn that it is off.
    with (
        ksm_running(),
        suite.daemon(ctx, "nomerge", agent_modules=AGENTS) as (plain, plain_pipe),
        suite.daemon(ctx, "merge", agent_modules=AGENTS, memory_merge=True) as (merged, pipe),
    ):
        _t, plain_ids = figs.burst_up(plain_pipe, n, timeout)
        try:
            _t, merged_ids = figs.burst_up(pipe, n, timeout)
            try:
                log(f"memory_merge: {n} idle VSMs each side, KSM running")
                cpu0, t0 = ksmd_seconds(), time.monotonic()
                took = _settle(ctx, merged, n, settle_for)
                first = {"plain": _uss(plain), "merged": _uss(merged)}
                cpu = (ksmd_seconds() - cpu0) / (time.monotonic() - t0) * 100
                log(f"memory_merge: one MCP session with each of {2 * n} VSMs")
                asyncio.run(one_session_each(plain, plain_ids))
                asyncio.run(one_session_each(merged, merged_ids))
                took_later = _settle(ctx, merged, n, settle_for)
                later = {"plain": _uss(plain), "merged": _uss(merged)}
            finally:
                figs.terminate(pipe, merged_ids, timeout)
        finally:
            figs.terminate(plain_pipe, plain_ids, timeout)
    k = f"{PREFIX}.{n}"
    for when, got in (("idle", first), ("served", later)):
        for side in ("plain", "merged"):
            uss, pss = got[side]
            res.add(f"{k}.{when}.{side}_uss_mib", f"{when}: USS, {side}", "MiB", uss, n)
            res.add(
                f"{k}.{when}.{side}_pss_total_mib", f"{when}: PSS of all, {side}", "MiB", [pss], n
            )
    res.add(f"{k}.settle_s", "from all up until the merged USS held still", "s", [took], n)
    res.add(f"{k}.settle_later_s", "the same after the sessions", "s", [took_later], n)
    res.add(f"{k}.ksmd_cpu_pct", "KSM's thread while settling", "% of a core", [cpu], n)
    res.add(
        f"{k}.pages_to_scan_per_s",
        "KSM's scan rate in this step",
        "pages/s",
        [PAGES_TO_SCAN * 1000 / SLEEP_MS],
        n,
    )
