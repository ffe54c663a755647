"""The scale figure: how many idle VSMs one daemon holds on this machine while it still answers
``list`` within the goal's median. One daemon on the bench's private node; idle VSMs of the
default agent added in batches of spawns at once. After each batch, once the daemon's and the
broker's CPU stopped falling, with nothing else asked of the daemon: the machine's memory, the
RSS of the broker and the daemon, USS and PSS of a sample of the VSMs, ``list`` round trips,
then idle CPU (the daemon's includes its sampler's), each window with how busy the whole machine
was, since other work on it shares the same cores.

Growth stops at the step's largest N, when ``list`` goes over the goal's median, when the next
batch would leave less than MARGIN_GIB of the machine's memory available, or when a batch fails.
Every VSM is terminated at the end, and none may be left.

A second run (its own step, ``scale_merge``) grows the same way with ``memory_merge = true``
while the kernel's KSM runs, where the kernel allows it."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field

import psutil

from bench import merge_step, suite
from bench import vsmd_figs as figs
from bench.bus import AdminPipe, BenchError
from bench.plan import Plan
from bench.resources import MIB, cpu_of, idle_cpu
from bench.scale_report import GOAL_LIST_MS
from bench.stats import log, percentile
from bench.vsmd_proc import VsmdProc

PREFIX = "scale"
MERGED = "scalemerge"  # the same growth with memory_merge = true while KSM runs
GIB = 2**30
# `list` p50, as a share of the goal, from which VSMs are added a grain at a time. No line
# through the points so far foretold the next batch: over the second batch `list` grew 1.5 to
# 3 times as fast as over the first in trial runs, and one N gave medians a factor 2 apart.
FINE_FROM = 0.4
USS_SAMPLE = 200  # VSMs whose USS and PSS are read at each N
LIST_REPS = 20  # `list` round trips per round, through VsmClient and on an open channel each
MARGIN_GIB = 3.0  # machine memory that must stay available after the next batch
# Cost per VSM assumed for the first batch, before one was measured: well above what an idle
# VSM with its broker connection was seen to cost, so the first batch cannot overshoot.
FIRST_GUESS_MIB = 30.0
SETTLE_S = 60.0  # at most, after a batch, before the figures are taken anyway
SETTLE_WINDOW_S = 1.0  # the daemon's sample_interval: each window holds one sampler pass
SETTLED_RATIO = 0.8  # a window with at least this share of the one before: done falling
GONE_S = 30.0  # how long VSM processes may linger after their terminate was answered


def scale_sizes(plan: Plan) -> tuple[int, int]:
    return plan.scale


@dataclass(frozen=True)
class Point:
    """The machine with ``n`` idle VSMs up."""

    n: int
    list_p50: float
    used_gib: float
    vsm_uss_mib: float  # the median VSM's (0 with none up)


@dataclass
class Growth:
    prefix: str  # of the figures' keys: PREFIX, or MERGED for the run with memory_merge
    batch: int
    top: int
    ids: list[str] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    best: int = 0  # the largest N measured with `list` within the goal


def run_scale(ctx: suite.Ctx) -> None:
    _run(ctx, PREFIX)


def run_scale_merged(ctx: suite.Ctx) -> None:
    """The same growth with ``memory_merge = true`` while the kernel's KSM runs at the merge
    step's rate: KSM merges in the background, so at each N the memory figures hold what it
    had merged by then, and the margin is judged on those, as a machine would run."""
    why = merge_step.unavailable()
    if why:
        ctx.res.note(f"{MERGED}: not run: {why}")
        return
    with merge_step.ksm_running():
        cpu0, t0 = merge_step.ksmd_seconds(), time.monotonic()
        try:
            _run(ctx, MERGED, memory_merge=True)
        finally:
            cpu = (merge_step.ksmd_seconds() - cpu0) / (time.monotonic() - t0) * 100
            label = "KSM's thread over the whole step"
            ctx.res.add(f"{MERGED}.ksmd_cpu_pct", label, "% of a core", [cpu])
            rate = merge_step.PAGES_TO_SCAN * 1000 / merge_step.SLEEP_MS
            ctx.res.add(f"{MERGED}.ksm_pages_per_s", "KSM's scan rate", "pages/s", [rate])


def _run(ctx: suite.Ctx, prefix: str, **extra: object) -> None:
    batch, top = scale_sizes(ctx.plan)
    start = time.monotonic()
    # The bench's config allows 1,200 VSMs in all; VSMs at the top level count against
    # max_total only (max_children is per parent).
    with suite.daemon(ctx, prefix, max_total=top, **extra) as (d, pipe):
        g = Growth(prefix, batch, top)
        try:
            _grow(ctx, d, pipe, g)
        finally:
            ctx.res.add(
                f"{prefix}.max_n", "largest N with `list` within the goal", "VSMs", [g.best]
            )
            _tear_down(ctx, d, pipe, g)
    took = time.monotonic() - start
    ctx.res.add(f"{prefix}.step_s", "the whole step, daemon start to stop", "s", [took])


def _settings(ctx: suite.Ctx, g: Growth) -> None:
    for key, label, unit, value in (
        ("target_n", "the step's largest N", "VSMs", g.top),
        ("batch_n", "VSMs per batch, spawned at once", "VSMs", g.batch),
        ("grain_n", "the finer step, near a limit", "VSMs", _grain(g)),
        (
            "fine_from_ms",
            "`list` median from which the finer step is taken",
            "ms",
            FINE_FROM * GOAL_LIST_MS,
        ),
        ("limit_ms", "`list` median over which growth stops", "ms", GOAL_LIST_MS),
        ("margin_gib", "memory that must stay available after a batch", "GiB", MARGIN_GIB),
        ("idle_s", "idle window for CPU at each N", "s", ctx.plan.idle_seconds),
    ):
        ctx.res.add(f"{g.prefix}.{key}", label, unit, [value])


def _grow(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe, g: Growth) -> None:
    _settings(ctx, g)
    g.points.append(_measure(ctx, d, pipe, g.prefix, 0))
    if g.points[-1].list_p50 > GOAL_LIST_MS:
        ctx.res.note(f"{g.prefix}: `list` over {GOAL_LIST_MS:g} ms p50 with no VSM up")
        return
    while True:
        step = _next_step(g)
        if step <= 0:
            log(f"{g.prefix}: reached the step's largest N, {g.top:,}")
            return
        step = _room_for(ctx, g, step)
        if not step or not _add_batch(ctx, pipe, g, step):
            return
        point = _measure(ctx, d, pipe, g.prefix, len(g.ids))
        g.points.append(point)
        if point.list_p50 > GOAL_LIST_MS:
            ctx.res.note(
                f"{g.prefix}: stopped at {point.n:,} VSMs: `list` took {point.list_p50:.1f} ms "
                f"p50, over {GOAL_LIST_MS:g} ms"
            )
            return
        g.best = point.n


def _grain(g: Growth) -> int:
    """The finer step, near a limit: on `list`'s or the memory's."""
    return max(1, g.batch // 5)


def _next_step(g: Growth) -> int:
    """A batch; a grain once `list` is past FINE_FROM of the goal, so that the figure lies a
    grain, not a batch, below where `list` went over. Always growing: VSMs terminated on the
    way down would leave the daemon in another state than one that only grew."""
    left = g.top - len(g.ids)
    if g.points[-1].list_p50 > FINE_FROM * GOAL_LIST_MS:
        return min(_grain(g), left)
    return min(g.batch, left)


def _cost_per_vsm_gib(g: Growth) -> float:
    """What one more VSM costs the machine, from the last batch."""
    if len(g.points) < 2:
        return FIRST_GUESS_MIB / 1024
    a, b = g.points[-2], g.points[-1]
    machine = (b.used_gib - a.used_gib) / (b.n - a.n)
    # Other work on the machine may have freed memory meanwhile; a VSM costs at least its USS.
    return max(machine, b.vsm_uss_mib / 1024)


def _room_for(ctx: suite.Ctx, g: Growth, step: int) -> int:
    """How many of the next ``step`` VSMs fit above the margin at the last batch's cost: all,
    a smaller batch (in steps of a fifth of a batch) that fills the machine up to the margin,
    or 0, and then why growth stops is recorded."""
    per_vsm = _cost_per_vsm_gib(g)
    avail = psutil.virtual_memory().available / GIB
    if avail - per_vsm * step >= MARGIN_GIB:
        return step
    grain = _grain(g)
    fits = int((avail - MARGIN_GIB) / per_vsm) // grain * grain
    if fits > 0:
        return min(fits, step)
    n, res, need, p = len(g.ids), ctx.res, per_vsm * grain, g.prefix
    res.add(f"{p}.stop.next_n", "the smallest batch, which did not fit", "VSMs", [grain], n)
    res.add(f"{p}.stop.next_batch_gib", "its estimated memory", "GiB", [need], n)
    res.add(f"{p}.stop.available_gib", "memory available at the stop", "GiB", [avail], n)
    res.note(
        f"{p}: stopped at {n:,} VSMs: {grain} more would need about {need:.2f} GiB with "
        f"{avail:.1f} GiB available, under the {MARGIN_GIB:g} GiB margin"
    )
    return 0


def _add_batch(ctx: suite.Ctx, pipe: AdminPipe, g: Growth, step: int) -> bool:
    n = len(g.ids) + step
    try:
        up, ids = figs.burst_up(pipe, step, 60.0 + 0.5 * step)
    except BenchError as exc:
        p = g.prefix
        ctx.res.add(f"{p}.stop.failed_n", "N the failed batch was to reach", "VSMs", [n], n)
        ctx.res.note(f"{p}: stopped at {len(g.ids):,} VSMs: the batch to {n:,} failed: {exc}")
        return False
    g.ids += ids
    label = f"batch of {step}: spawns at once, until all ready"
    ctx.res.add(f"{g.prefix}.{n}.up_s", label, "s", [up], n)
    log(f"{g.prefix}: {n:,} VSMs up; the batch of {step} took {up:.2f} s")
    return True


def _measure(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe, prefix: str, n: int) -> Point:
    alive = len(d.vsm_pids())
    if alive != n:
        ctx.res.note(f"{prefix}: {alive} VSM processes seen where {n} were expected")
    settled = _settle(ctx, d)
    figures = [*_memory(ctx, d), *_list_and_idle(ctx, d, pipe, n)]
    label = "after the batch, until daemon and broker CPU stopped falling"
    figures.append(("settle_s", label, "s", [settled]))
    for suffix, label, unit, samples in figures:
        ctx.res.add(f"{prefix}.{n}.{suffix}", label, unit, samples, n)
    got = {suffix: samples for suffix, _label, _unit, samples in figures}
    point = Point(
        n,
        statistics.median(got["list_ms"]),
        got["mem_used_gib"][0],
        statistics.median(got["vsm_uss_mib"]) if got["vsm_uss_mib"] else 0.0,
    )
    busy = got["machine_idle_pct"][0]
    log(
        f"{prefix}: {n:,} VSMs: list p50 {point.list_p50:.1f} ms "
        f"(p99 {percentile(got['list_ms'], 99):.1f}), memory in use {point.used_gib:.2f} GiB, "
        f"machine {busy:.0f}% of a core busy while idle"
    )
    return point


Figures = list[tuple[str, str, str, list[float]]]  # (key suffix, label, unit, samples)


def _rss_mib(pid: int | None) -> list[float]:
    if pid is None:
        return []
    with contextlib.suppress(psutil.Error):
        return [psutil.Process(pid).memory_info().rss / MIB]
    return []


def _memory(ctx: suite.Ctx, d: VsmdProc) -> Figures:
    """The machine's memory, the managers' RSS, and USS and PSS of a sample of the VSMs:
    reading a VSM's smaps took ~10 ms each on a loaded machine, so all 3,000 would take the
    bench half a minute at every N, and their USS varies little (the sample's spread is kept)."""
    vm = psutil.virtual_memory()
    pids = d.vsm_pids()
    sample = random.sample(pids, min(USS_SAMPLE, len(pids)))
    uss: list[float] = []
    pss: list[float] = []
    for pid in sample:
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(pid).memory_full_info()
            uss.append(info.uss / MIB)
            pss.append(info.pss / MIB)
    what = f"a sample of {len(uss)} VSMs" if len(uss) < len(pids) else "every VSM"
    used = (vm.total - vm.available) / GIB
    return [
        ("mem_used_gib", "machine memory in use (total - available)", "GiB", [used]),
        ("mem_avail_gib", "machine memory available", "GiB", [vm.available / GIB]),
        ("broker_mib", "broker RSS", "MiB", _rss_mib(ctx.broker_pid)),
        ("daemon_mib", "daemon RSS", "MiB", _rss_mib(d.pid)),
        ("forkserver_mib", "fork server RSS", "MiB", _rss_mib(d.forkserver_pid())),
        ("vsm_uss_mib", f"idle VSM USS, {what}", "MiB", uss),
        ("vsm_pss_mib", f"idle VSM PSS, {what}", "MiB", pss),
    ]


def _settle(ctx: suite.Ctx, d: VsmdProc) -> float:
    """Seconds until the daemon's and the broker's CPU stop falling after a batch, so that the
    figures are of idle VSMs, not of the tail of their start; one window is one sampler pass."""
    pids = [d.pid, ctx.broker_pid]
    start = time.monotonic()
    last: float | None = None
    while time.monotonic() - start < SETTLE_S:
        before, t = cpu_of(pids), time.perf_counter()
        time.sleep(SETTLE_WINDOW_S)
        rate = (cpu_of(pids) - before) / (time.perf_counter() - t)
        if last is not None and rate >= last * SETTLED_RATIO:
            break
        last = rate
    return time.monotonic() - start


def _cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (steal excluded: not ours to use)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


def _list_and_idle(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe, n: int) -> Figures:
    """`list` round trips before and after the idle window, and idle CPU with how busy the
    whole machine was meanwhile: other work on it shares the same cores (while `list` runs,
    the bench and the daemon keep them busy themselves, so only the idle window tells)."""
    client, raw = figs.list_rtt(d, pipe, LIST_REPS, n)
    me = psutil.Process()
    busy, mine, t = _busy_s(), _cpu_s(me), time.perf_counter()
    cpu = idle_cpu(d, ctx.broker_pid, ctx.plan.idle_seconds)
    wall = time.perf_counter() - t
    idle_busy = (_busy_s() - busy) / wall * 100
    # The bench reads every VSM's /proc entries inside that window: its own share.
    cpu["bench"] = (_cpu_s(me) - mine) / wall * 100
    # A second round after the window: in a trial at 1,000 idle VSMs the median of one round
    # moved between 27 and 52 ms from one round to the next with nothing else changing, so
    # one round alone would decide the figure by luck.
    more_client, more_raw = figs.list_rtt(d, pipe, LIST_REPS, n)
    client += more_client
    raw += more_raw
    out: Figures = [
        ("list_ms", "`list` of every VSM round trip (VsmClient)", "ms", client),
        ("list_raw_ms", "`list` of every VSM round trip (open channel)", "ms", raw),
        ("machine_idle_pct", "whole machine busy in the idle window", "% of a core", [idle_busy]),
    ]
    for who in ("daemon", "broker", "forkserver", "vsms_total", "bench", "kdamond"):
        if who in cpu:
            label = f"idle CPU: {who}" + (" (its sampler included)" if who == "daemon" else "")
            out.append((f"{who}_idle_pct", label, "% of a core", [cpu[who]]))
    return out


def _tear_down(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe, g: Growth) -> None:
    """Terminate every VSM the daemon knows (also any of a batch whose replies went missing),
    a batch at a time: a thousand or more at once on two cores do not all stop within the
    daemon's stop_timeout and are killed. Then wait until no VSM process is left."""
    with d.client() as c:
        ids = [v.id for v in c.list_child_vsms()]
    down, batch = 0.0, g.batch
    for at in range(0, len(ids), batch):
        chunk = ids[at : at + batch]
        down += figs.terminate(pipe, chunk, 60.0 + 0.5 * len(chunk))
    n = len(ids)
    label = f"terminate every VSM, {batch} at once, one batch after the other"
    ctx.res.add(f"{g.prefix}.down_s", label, "s", [down], n)
    deadline = time.monotonic() + GONE_S
    while d.vsm_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = d.vsm_pids()
    if left:
        ctx.res.fail(f"{g.prefix}: {len(left)} VSM processes left {GONE_S:g} s after terminate")
    log(f"{g.prefix}: {n:,} VSMs terminated in {down:.2f} s; {len(left)} processes left")
