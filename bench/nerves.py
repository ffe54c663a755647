"""The nervous system: state updates child -> parent, a broadcast down a subtree and
request/reply between VSMs, measured inside VSMs by the agents of bench/nerve_agents.py; each
next to the VSM's AMQP client bare (no runtime) doing the same on the same broker
(bench/nerve_floor.py)."""

from __future__ import annotations

import functools
import os
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson

from bench import suite
from bench.bus import AdminPipe, BenchError, Tap
from bench.resources import CpuWindow, memory_monitors
from bench.stats import Results, log
from bench.vsmd_figs import terminate
from bench.vsmd_proc import REPO, VsmdProc
from vsmd.bus.topology import Topology
from vsmd.protocol import Envelope, Spawn
from vsmd.state import Clock, Entry, encode

PREFIX = "ns"  # vsmd's figures here; the floor's are "nsfloor."
# Before a broadcast's rounds: what the receivers and the broker use with nothing to do, over
# this long, once the spawns' after-work stopped (its CPU no longer falling by a fifth a second).
IDLE_S = 3.0
SETTLE_S = 30.0
SETTLED_RATIO = 0.8


def spawn_vsms(pipe: AdminPipe, n: int, parent: str | None, agent: str) -> list[dict[str, Any]]:
    _start, replies = pipe.run([Spawn(parent=parent, agent=agent) for _ in range(n)], 60 + n)
    infos = [r["result"] for _t, r in replies if r.get("ok")]
    if len(infos) != n:
        bad = next(r.get("error") for _t, r in replies if not r.get("ok"))
        terminate(pipe, [i["id"] for i in infos], 60 + n)
        raise BenchError(f"{n - len(infos)} of {n} spawns failed, e.g. {bad}")
    return infos


def state_bytes(info: dict[str, Any], key: str, value: Any) -> int:
    """Size of the message that carries one write of ``key`` from this VSM to its parent."""
    vsm_id = str(info["id"])
    delta = encode({("data", key): Entry(value, Clock(vsm_id).tick())})
    env = Envelope(type="state", sender=vsm_id, path=str(info.get("path", "")), body=delta)
    return len(env.encode())


def call_bytes(info: dict[str, Any], kind: str) -> int:
    body = {"kind": kind, "args": {}}
    env = Envelope(type="call", sender=str(info["id"]), path=str(info.get("path", "")), body=body)
    return len(env.encode())


def run_nerves(ctx: suite.Ctx) -> None:
    # One root gets 1,000 children at once: the per-parent spawn throttle as the overall one.
    extra = {"parent_spawn_rate": 1000.0, "parent_spawn_burst": 1000}
    with suite.daemon(ctx, "nerves", agent_modules=["bench.agents"], **extra) as (d, pipe):
        sizes: dict[str, int] = {}
        suite.guarded(ctx, "nerves: state", functools.partial(_state, ctx, d, pipe, sizes))
        suite.guarded(ctx, "nerves: broadcast", functools.partial(_broadcast, ctx, d, pipe))
    suite.guarded(ctx, "nerves: floor", functools.partial(_floors, ctx, sizes))


def _state(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe, sizes: dict[str, int]) -> None:
    """One parent, one child: latency and request/reply; then more children: the rate."""
    plan, res = ctx.plan, ctx.res
    [parent] = spawn_vsms(pipe, 1, None, "nerveparent")
    try:
        [child] = spawn_vsms(pipe, 1, parent["id"], "nervechild")
        sizes["probe"] = state_bytes(child, "probe", [time.time(), 0, time.monotonic()])
        sizes["burst"] = state_bytes(child, "burst", [time.time(), 100_000, False])
        sizes["call"] = call_bytes(parent, "echo")
        res.add(
            f"{PREFIX}.state.probe_bytes", "one write's delta message", "bytes", [sizes["probe"]]
        )
        _pairs(ctx, d, parent["id"], child["id"], sizes)
        k = plan.nerve_children
        more = spawn_vsms(pipe, k - 1, parent["id"], "nervechild")
        kids = [child["id"], *[i["id"] for i in more]]
        for _ in range(plan.nerve_rate_repeats):
            _rate(ctx, d, parent["id"], kids)
    finally:
        terminate(pipe, [parent["id"]], 120.0)


def _pairs(ctx: suite.Ctx, d: VsmdProc, parent: str, child: str, sizes: dict[str, int]) -> None:
    """Latency and request/reply of the pair next to the bare client's, in alternating rounds.

    On these shared machines the same pair's request/reply was 1.24-1.34 ms in one window and
    0.69-0.88 ms minutes later: vsmd's figures and the floor's, taken minutes apart, compared
    two windows rather than two clients. Each round takes a share of the samples of each, in
    turn (the floor first in every other round); the per-round ratios show how far the
    windows moved the comparison."""
    plan, res = ctx.plan, ctx.res
    rounds = plan.nerve_pair_rounds
    probes, rr = max(1, plan.nerve_probes // rounds), max(1, plan.nerve_rr // rounds)
    url, gap = ctx.url, plan.nerve_gap
    turns: list[float] = []
    with d.client() as c:

        def vsmd_latency() -> list[float]:
            out = c.call(parent, "latency", {"child": child, "n": probes, "gap": gap})
            turns.append(out["turn_ms"])
            if out["missed"]:
                res.note(f"state latency: the parent saw {probes - out['missed']} of {probes}")
            return list(out["ms"])

        def floor_latency() -> list[float]:
            got, _took = _pair(url, "latency", probes, sizes["probe"], gap)
            return list(got["ms"])

        def vsmd_rr() -> list[float]:
            return list(c.call(parent, "rr", {"child": child, "n": rr})["ms"])

        def floor_plain() -> list[float]:
            return floor_rr(url, rr, sizes["call"], False)

        def floor_like_vsmd() -> list[float]:
            return floor_rr(url, rr, sizes["call"], True)

        measures = {
            f"{PREFIX}.state.latency_ms": vsmd_latency,
            "nsfloor.latency_ms": floor_latency,
            f"{PREFIX}.rr_ms": vsmd_rr,
            "nsfloor.rr_ms": floor_plain,
            "nsfloor.rr_vsmd_ms": floor_like_vsmd,
        }
        got: dict[str, list[list[float]]] = {k: [] for k in measures}
        for r in range(rounds):
            order = list(measures) if r % 2 == 0 else list(reversed(measures))
            for key in order:
                got[key].append(measures[key]())
    _record_pairs(res, got, turns)


_PAIR_LABELS = {
    f"{PREFIX}.state.latency_ms": "state write in a child -> in the parent's replica",
    "nsfloor.latency_ms": "publisher -> consumer, one message at a time",
    f"{PREFIX}.rr_ms": "request/reply parent -> child (ctx.request)",
    "nsfloor.rr_ms": "request/reply, direct reply-to",
    "nsfloor.rr_vsmd_ms": "request/reply, direct reply-to, a VSM's channels (mandatory, acked)",
}


def _record_pairs(res: Results, got: dict[str, list[list[float]]], turns: list[float]) -> None:
    for key, per_round in got.items():
        res.add(key, _PAIR_LABELS[key], "ms", [v for one in per_round for v in one], 1)
    label = "parent's loop turn while it waits for a probe (each round)"
    res.add(f"{PREFIX}.state.turn_ms", label, "ms", turns)
    for name, mine, floor in (
        ("latency", f"{PREFIX}.state.latency_ms", "nsfloor.latency_ms"),
        ("rr", f"{PREFIX}.rr_ms", "nsfloor.rr_vsmd_ms"),
    ):
        ratios = [
            statistics.median(a) / statistics.median(b)
            for a, b in zip(got[mine], got[floor], strict=True)
        ]
        label = f"{name}: vsmd's median over the bare client's, each round"
        res.add(f"{PREFIX}.pairs.{name}_ratio", label, "x", ratios, 1)


def _rate(ctx: suite.Ctx, d: VsmdProc, parent: str, kids: list[str]) -> None:
    res, k, seconds = ctx.res, len(kids), ctx.plan.nerve_seconds
    named: dict[str, list[int | None]] = {
        "broker": [ctx.broker_pid],
        "daemon": [d.pid],
        "vsms": list(d.vsm_pids()),
    }
    # A copy of every delta to the parent: the broker routes each to one more queue.
    tap = Tap(ctx.url, Topology(d.namespace).exchange, f"toparent.{parent}.*")
    try:
        window = CpuWindow(named)
        with d.client(seconds + 120) as c:
            ask = {"children": kids, "seconds": seconds, "every": k / ctx.plan.nerve_offered}
            out = c.call(parent, "rate", ask, seconds + 90)
        suite.add_cpu(ctx, f"{PREFIX}.state.rate.{k}", k, window.stop({}), "writing")
    finally:
        deltas, size = tap.take()
    if out["finished"] != k:
        raise BenchError(f"state rate: {out['finished']} of {k} children finished in time")
    took = out["seconds"]
    log(f"state rate: {out['writes']} writes in {deltas} deltas of {k} children in {took:.2f} s")
    key = f"{PREFIX}.state.rate.{k}"
    label = "state deltas of N children to the parent"
    res.add(f"{key}.deltas_per_s", label, "deltas/s", [deltas / took], k)
    res.add(
        f"{key}.writes_per_s",
        "updates of N children in the parent's replica (each write to a key of its own)",
        "updates/s",
        [out["writes"] / took],
        k,
    )
    res.add(f"{key}.deltas", "deltas the children sent the parent", "deltas", [deltas], k)
    res.add(f"{key}.delta_bytes", "mean size of a delta (first 200)", "bytes", [size], k)
    label = "from the parent's go until its replica had every last write"
    res.add(f"{key}.s", label, "s", [took], k)


def _broadcast(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe) -> None:
    plan, res, n = ctx.plan, ctx.res, ctx.plan.nerve_subtree
    [root] = spawn_vsms(pipe, 1, None, "nerveparent")
    try:
        spawn_vsms(pipe, n, root["id"], "nervechild")
        with d.client(300.0) as c:
            rounds = plan.nerve_rounds
            named: dict[str, list[int | None]] = {
                "vsms": list(d.vsm_pids()),
                "broker": [ctx.broker_pid],
                "daemon": [d.pid],
                **memory_monitors(),
            }
            idle = _idle_rates(named)
            window = CpuWindow(named)
            started = time.perf_counter()
            sent = c.call(root["id"], "bcast", {"rounds": rounds, "gap": 0.5})
            window_s = time.perf_counter() - started
            cpu = window.stop({})
            _cpu_per_arrival(ctx, f"{PREFIX}.bcast.{n}", n * rounds, cpu, window_s, idle)
            t0 = sent["t0"]
            label = "the root's ctx.broadcast, until it returned (the broker's confirm)"
            res.add(f"{PREFIX}.bcast.{n}.publish_ms", label, "ms", sent["took_ms"], n)
            got = c.call(root["id"], "arrivals", {"expect": n, "timeout": 120.0})["reports"]
    finally:
        terminate(pipe, [root["id"]], 300.0)
    if len(got) != n:
        raise BenchError(f"broadcast: {len(got)} of {n} receivers reported")
    every: list[float] = []
    for r, sent in enumerate(t0):
        arrived = [(times[str(r)] - sent) * 1e3 for times in got.values() if str(r) in times]
        if len(arrived) != n:
            res.fail(f"broadcast round {r}: {len(arrived)} of {n} VSMs had it")
            continue
        every.extend(arrived)
        res.add(
            f"{PREFIX}.bcast.{n}.all_ms",
            "broadcast from the root until all N have it",
            "ms",
            [max(arrived)],
            n,
        )
    label = "broadcast from the root until each VSM has it (every arrival)"
    res.add(f"{PREFIX}.bcast.{n}.each_ms", label, "ms", every, n)


def _idle_rates(named: dict[str, list[int | None]]) -> dict[str, float]:
    """CPU seconds per second of each group with nothing asked of it: once what the spawns set
    off has died down, over IDLE_S."""
    deadline, last = time.monotonic() + SETTLE_S, None
    while time.monotonic() < deadline:
        window = CpuWindow(named)
        time.sleep(1.0)  # a measuring window, not a wait for something
        total = sum(window.stop({}).values())
        if last is not None and total >= SETTLED_RATIO * last:
            break
        last = total
    window, started = CpuWindow(named), time.perf_counter()
    time.sleep(IDLE_S)
    took = time.perf_counter() - started
    return {who: secs / took for who, secs in window.stop({}).items()}


def _cpu_per_arrival(
    ctx: suite.Ctx,
    key: str,
    arrivals: int,
    cpu: dict[str, float],
    window_s: float,
    idle: dict[str, float],
) -> None:
    """CPU ms per message that reached one receiver, over the rounds (their gaps included):
    as taken, and less what the same processes use idle over a window as long."""
    ctx.res.add(f"{key}.window_s", "the rounds, their gaps included", "s", [window_s], arrivals)
    for who, secs in cpu.items():
        label = f"CPU per arrival while broadcasting: {who}"
        ctx.res.add(f"{key}.cpu_{who}_ms", label, "CPU ms", [secs * 1e3 / arrivals], arrivals)
        if who not in idle:
            continue
        label = f"idle CPU just before the rounds: {who}"
        ctx.res.add(f"{key}.idle_{who}_pct", label, "% of a core", [idle[who] * 100], arrivals)
        net = max(0.0, secs - idle[who] * window_s) * 1e3 / arrivals
        label = f"CPU per arrival while broadcasting, less idle: {who}"
        ctx.res.add(f"{key}.net_{who}_ms", label, "CPU ms", [net], arrivals)


# --- the floor: the bare client ---------------------------------------------------------------


def _proc(role: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "bench.nerve_floor", role, orjson.dumps(args).decode()]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _ready(p: subprocess.Popen[str], timeout: float = 30.0) -> None:
    assert p.stdout is not None
    readable, _w, _x = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if readable else ""
    if line.strip() != "ready":
        p.kill()
        raise BenchError(f"floor process not ready: {line[:200]!r}")


def _result(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise BenchError(f"floor process gave no result within {timeout:g} s") from None
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise BenchError(f"floor process exited {p.returncode}")
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


def _pair(url: str, mode: str, n: int, size: int, gap: float) -> tuple[dict[str, Any], float]:
    base = {"url": url, "queue": f"bench-nerve-{uuid.uuid4().hex[:12]}", "n": n, "mode": mode}
    sink = _proc("sink", {**base, "timeout": 60.0 + n * gap + n / 1000})
    try:
        _ready(sink)
        source = _proc("source", {**base, "size": size, "gap": gap})
        start = _result(source, 120.0 + n * gap)["start"]
        got = _result(sink, 120.0)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return got, got["last"] - float(start)


def floor_rr(
    url: str, n: int, size: int, like_vsmd: bool, reply_size: int | None = None
) -> list[float]:
    """ms of ``n`` bare request/reply round trips (requests of ``size`` bytes; replies of
    ``reply_size`` bytes, else a vsmd reply of an empty result)."""
    base = {
        "url": url,
        "queue": f"bench-nerve-{uuid.uuid4().hex[:12]}",
        "like_vsmd": like_vsmd,
        "reply_size": reply_size,
    }
    server = _proc("server", base)
    try:
        _ready(server)
        ms: list[float] = _result(_proc("client", {**base, "n": n, "size": size}), 120.0)["ms"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10.0)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return ms


def _floors(ctx: suite.Ctx, sizes: dict[str, int]) -> None:
    plan, res = ctx.plan, ctx.res
    log("nerves floor: bare-client rate pairs")
    probe = sizes.get("probe", 300)
    for key in [k for k in res.figures if k.startswith(f"{PREFIX}.state.rate.")]:
        if not key.endswith(".deltas"):
            continue
        fig, stem = res.figures[key], key.removesuffix(".deltas")
        size = int(res.median(f"{stem}.delta_bytes") or probe)
        for deltas in fig.samples:
            n = min(int(deltas), plan.nerve_floor_cap or int(deltas))
            _got, took = _pair(ctx.url, "rate", n, size, 0.0)
            label = "as many messages as the children sent deltas (same size), at once"
            res.add(f"nsfloor.rate.{fig.n}.per_s", label, "messages/s", [n / took], fig.n)
    _floor_broadcast(ctx)


def _floor_broadcast(ctx: suite.Ctx) -> None:
    """The broadcast of vsmd's step, to as many forked bare-client receivers."""
    plan, res, n = ctx.plan, ctx.res, ctx.plan.nerve_subtree
    log(f"nerves floor: broadcast to {n} forked receivers")
    suite.pause(ctx, "the broadcast floor")
    stem = f"bench-bcast-{uuid.uuid4().hex[:12]}"
    args = {
        "url": ctx.url,
        "exchange": stem,
        "collect": f"{stem}.collect",
        "n": n,
        "rounds": plan.nerve_rounds,
        "gap": 0.5,
        "timeout": 120.0,
        "watch": {"broker": [ctx.broker_pid], **memory_monitors()},
        "idle_s": IDLE_S,
    }
    got = _result(_proc("fanout", args), 300.0 + plan.nerve_rounds)
    arrivals = n * plan.nerve_rounds
    _cpu_per_arrival(ctx, f"nsfloor.bcast.{n}", arrivals, got["cpu"], got["window_s"], got["idle"])
    if got["missed"]:
        res.fail(f"broadcast floor: {got['missed']} arrivals missing")
    label = "bare client: broadcast until all N forked receivers have it"
    res.add(f"nsfloor.bcast.{n}.all_ms", label, "ms", got["all_ms"], n)
    label = "bare client: broadcast until each receiver has it (every arrival)"
    res.add(f"nsfloor.bcast.{n}.each_ms", label, "ms", got["each_ms"], n)
