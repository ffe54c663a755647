"""The worker agent's throughput: tasks/s through one worker and through ten workers under one
parent, next to bare-client consumers doing the same broker work per task (the floor,
bench/worker_floor.py). One submitter process feeds both the same way, and vsmd and the floor
take turns, so load that comes and goes on the machine falls on both."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from bench import suite
from bench.bus import AdminPipe, BenchError
from bench.resources import CpuWindow
from bench.stats import log
from bench.vsmd_figs import terminate
from bench.vsmd_proc import REPO, VsmdProc
from bench.worker_tasks import ANOOP, ASYNC_KIND, NOOP
from vsmd.bus.connection import close_quietly, connect
from vsmd.bus.topology import Topology
from vsmd.protocol import Spawn
from vsmd.tasks.message import STATUS_CALL

PREFIX = "worker"  # vsmd's figures here; the floor's are "workerfloor."
FLOOR = "workerfloor"
CONFIG = {"tasks_modules": ["bench.worker_tasks"]}  # everything else the worker's default
PREFETCH = 4  # the worker's default concurrency, which is its queue's prefetch
EXPIRES = 7 * 24 * 3600.0  # the worker's default queue_expires, declared alike by the floor
WARM = 5  # tasks one at a time through each queue before the measured batch
WINDOW = 64  # publishes the submitter has in flight at once


@dataclass
class Side:
    """One contender, up and serving: its task queues and, by name, the processes whose CPU a
    task costs (the submitter measures its own)."""

    queues: list[str]
    pids: dict[str, list[int | None]]


def _proc(role: str, args: dict[str, Any], stdin: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "bench.worker_floor", role, orjson.dumps(args).decode()]
    pipe_in = subprocess.PIPE if stdin else subprocess.DEVNULL
    return subprocess.Popen(
        cmd, stdin=pipe_in, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )


def _line(p: subprocess.Popen[str], timeout: float) -> str:
    assert p.stdout is not None
    readable, _w, _x = select.select([p.stdout], [], [], timeout)
    return p.stdout.readline().strip() if readable else ""


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10.0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_workers(ctx: suite.Ctx) -> None:
    with suite.daemon(ctx, "workers") as (d, pipe), contextlib.ExitStack() as up:
        vsmd = {k: up.enter_context(_workers(d, pipe, k)) for k, _n in ctx.plan.worker_tasks}
        floor = {k: up.enter_context(_consumers(ctx.url, k)) for k, _n in ctx.plan.worker_tasks}
        for side in (*vsmd.values(), *floor.values()):
            side.pids["broker"] = [ctx.broker_pid]
        for _rep in range(ctx.plan.worker_repeats):
            for k, n in ctx.plan.worker_tasks:
                for prefix, side in ((PREFIX, vsmd[k]), (FLOOR, floor[k])):
                    step = functools.partial(_measure, ctx, prefix, side, k, n, NOOP)
                    suite.guarded(ctx, f"{prefix}: {k} x {n:,} tasks", step)
        # The same worker with a task that runs on its loop: what the thread of a plain one costs.
        k, n = ctx.plan.worker_tasks[0]
        for _rep in range(ctx.plan.worker_repeats):
            step = functools.partial(_measure, ctx, PREFIX, vsmd[k], k, n, ANOOP)
            suite.guarded(ctx, f"{PREFIX}: {k} x {n:,} async tasks", step)


@contextlib.contextmanager
def _workers(d: VsmdProc, pipe: AdminPipe, k: int) -> Iterator[Side]:
    """One worker at the top, or ``k`` > 1 workers under a parent of the default agent."""
    topo = Topology(d.namespace)
    parent: dict[str, Any] | None = None
    workers: list[dict[str, Any]] = []
    try:
        if k > 1:
            [parent] = _spawn(pipe, [Spawn()])
        under = parent["id"] if parent else None
        workers = _spawn(pipe, [Spawn(parent=under, agent="worker", config=CONFIG)] * k)
        queues = [topo.task_queue(w["id"]) for w in workers]
        with d.client(60.0) as c:
            for w, queue in zip(workers, queues, strict=True):
                # Answered once the agent's start declared the queue and consumes it.
                status = c.call(w["id"], STATUS_CALL, None, 60.0)
                if status.get("queue") != queue:
                    raise BenchError(f"worker {w['id']} serves {status.get('queue')!r}")
        pids: dict[str, list[int | None]] = {"workers": [w["pid"] for w in workers]}
        pids["daemon"] = [d.pid]
        if parent:
            pids["parent"] = [parent["pid"]]
        log(f"{PREFIX}: {k} worker(s) up" + (" under one parent" if parent else ""))
        yield Side(queues, pids)
    finally:
        # The daemon deletes a worker's queue when it removes the worker (or its parent).
        terminate(pipe, [parent["id"]] if parent else [w["id"] for w in workers], 60.0)


def _spawn(pipe: AdminPipe, spawns: list[Spawn]) -> list[dict[str, Any]]:
    _start, replies = pipe.run(spawns, 60.0 + len(spawns))
    infos = [r["result"] for _t, r in replies if r.get("ok")]
    if len(infos) != len(spawns):
        terminate(pipe, [i["id"] for i in infos], 60.0)
        bad = next(r.get("error") for _t, r in replies if not r.get("ok"))
        raise BenchError(f"{len(spawns) - len(infos)} of {len(spawns)} spawns failed: {bad}")
    return infos


@contextlib.contextmanager
def _consumers(url: str, k: int) -> Iterator[Side]:
    """``k`` bare consumer processes, a durable queue each; the queues are deleted after."""
    queues = [f"bench-worker-{uuid.uuid4().hex[:12]}" for _ in range(k)]
    base = {"url": url, "prefetch": PREFETCH, "expires": EXPIRES}
    procs = [_proc("consume", {**base, "queue": q}) for q in queues]
    try:
        for p in procs:
            if _line(p, 30.0) != "ready":
                raise BenchError(f"{FLOOR}: a consumer did not come up (exit {p.poll()})")
        yield Side(queues, {"consumers": [p.pid for p in procs]})
    finally:
        _stop(procs)
        conn = connect(url, heartbeat=0, timeout=10.0)
        try:
            ch = conn.channel()
            for q in queues:
                ch.queue_delete(q)
        finally:
            close_quietly(conn)


def _measure(ctx: suite.Ctx, prefix: str, side: Side, k: int, n: int, task: str) -> None:
    """``n`` tasks spread over the side's queues in turn; tasks/s from the first publish to the
    last result, and the CPU each process spent in that window, per task."""
    user = unquote(urlparse(ctx.url).username or "") or None
    args = {"url": ctx.url, "queues": side.queues, "n": n, "window": WINDOW, "warm": WARM}
    sub = _proc("submit", {**args, "task": task, "user": user, "timeout": 60.0 + n / 50}, True)
    try:
        if _line(sub, 60.0) != "ready":
            raise BenchError(f"{prefix}: the submitter did not come up (exit {sub.poll()})")
        window = CpuWindow(side.pids)
        assert sub.stdin is not None
        sub.stdin.write("go\n")
        sub.stdin.flush()
        line = _line(sub, 90.0 + n / 50)
        cpu = window.stop({})
    finally:
        _stop([sub])
    if not line.startswith("{"):
        raise BenchError(f"{prefix}: the submitter gave no result (exit {sub.returncode})")
    out = orjson.loads(line)
    if out["bad"]:
        raise BenchError(f"{prefix}: {out['bad']} of {n} tasks failed, e.g. {out['first_bad']}")
    took = float(out["seconds"])
    kind = "" if task == NOOP else ASYNC_KIND
    log(f"{prefix}: {n:,} {kind}tasks through {k} in {took:.2f} s ({n / took:,.0f}/s)")
    key, res = f"{prefix}.{k}.{kind}", ctx.res
    what = "vsmd workers" if prefix == PREFIX else "bare-client consumers"
    task_is = "plain no-op task, a thread each" if task == NOOP else "async no-op task"
    if prefix == FLOOR:
        task_is = "the same no-op task, called on the loop"
    res.add(f"{key}tasks_per_s", f"tasks/s through N {what} ({task_is})", "tasks/s", [n / took], k)
    res.add(f"{key}s", "first publish until the last result", "s", [took], k)
    res.add(f"{key}tasks", "tasks in a batch", "tasks", [n], k)
    published = [float(out["publish_s"])]
    res.add(f"{key}publish_s", "first publish until the last one confirmed", "s", published, k)
    cpu["submitter"] = float(out["cpu_s"])
    for who, secs in cpu.items():
        label = f"CPU per task: {who}"
        res.add(f"{key}cpu_{who}_ms", label, "CPU ms", [secs / n * 1e3], k)
