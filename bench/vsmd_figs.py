"""The measurements taken against one running vsmd."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from bench.bus import AdminPipe, BenchError, ReadyListener
from bench.resources import memory
from bench.vsmd_proc import BIN, VsmdProc
from vsmd.protocol import ListVsms, Ping, Policy, Spawn, SpawnConfig, Terminate


def _ms(seconds: float) -> float:
    return seconds * 1e3


def ping_rtt(d: VsmdProc, pipe: AdminPipe, reps: int) -> tuple[list[float], list[float]]:
    """ms of ``ping``: through VsmClient (as vsmctl does) and through a pre-opened channel."""
    client_ms: list[float] = []
    raw_ms: list[float] = []
    with d.client() as c:
        c.ping()
        for _ in range(reps):
            t = time.perf_counter()
            c.ping()
            client_ms.append(_ms(time.perf_counter() - t))
    pipe.one(Ping())
    for _ in range(reps):
        took, _reply = pipe.one(Ping())
        raw_ms.append(_ms(took))
    return client_ms, raw_ms


def sequential(d: VsmdProc, reps: int) -> tuple[list[float], list[float]]:
    """ms from spawn request to "ready" reply, one VSM at a time; and ms of its terminate."""
    spawn_ms: list[float] = []
    term_ms: list[float] = []
    with d.client() as c:
        for _ in range(reps):
            t = time.perf_counter()
            info = c.spawn_recursive_vsm(None, SpawnConfig())
            spawn_ms.append(_ms(time.perf_counter() - t))
            t = time.perf_counter()
            c.terminate_child_vsm(info.id)
            term_ms.append(_ms(time.perf_counter() - t))
    return spawn_ms, term_ms


def apart(d: VsmdProc, reps: int, gap: float) -> tuple[list[float], list[float]]:
    """ms from spawn request to "ready" of ``reps`` VSMs spawned one at a time, ``gap`` seconds
    apart (the fork server idle before each, as before an operator's spawn), and the idle USS
    (MiB) of each once they are all up; then they are terminated."""
    spawn_ms: list[float] = []
    ids: list[str] = []
    with d.client() as c:
        try:
            for _ in range(reps):
                time.sleep(gap)
                t = time.perf_counter()
                ids.append(c.spawn_recursive_vsm(None, SpawnConfig()).id)
                spawn_ms.append(_ms(time.perf_counter() - t))
            uss = settled_uss(d)
        finally:
            for vsm_id in ids:
                c.terminate_child_vsm(vsm_id)
    return spawn_ms, uss


def settled_uss(d: VsmdProc, timeout: float = 30.0) -> list[float]:
    """USS (MiB) of every VSM, once two readings 0.2 s apart agree on the median."""
    deadline = time.monotonic() + timeout
    last: list[float] = []
    while True:
        now = sorted(memory(d, None)["vsm_uss"])
        if last and now and abs(statistics.median(now) - statistics.median(last)) < 0.01:
            return now
        if time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.2)


def _failed(replies: Sequence[tuple[float, dict[str, Any]]]) -> list[str]:
    errs = [r.get("error") or {} for _t, r in replies if not r.get("ok")]
    return [f"{e.get('code')}: {str(e.get('message'))[:160]}" for e in errs]


def burst_up(
    pipe: AdminPipe, n: int, timeout: float, agent: str | None = None
) -> tuple[float, list[str]]:
    """All ``n`` spawn requests at once: (s until the last one is ready, ids)."""
    _start, replies = pipe.run([Spawn(agent=agent) for _ in range(n)], timeout)
    ids = [r["result"]["id"] for _t, r in replies if r.get("ok")]
    errors = _failed(replies)
    if errors:
        terminate(pipe, ids, timeout)
        raise BenchError(f"{len(errors)} of {n} spawns failed, e.g. {errors[0]}")
    return max(t for t, _r in replies), ids


def terminate(pipe: AdminPipe, ids: Sequence[str], timeout: float) -> float:
    """All terminate requests at once; s until the last is answered."""
    if not ids:
        return 0.0
    _start, replies = pipe.run([Terminate(id=i) for i in ids], timeout)
    errors = _failed(replies)
    if errors:
        raise BenchError(f"{len(errors)} of {len(ids)} terminates failed, e.g. {errors[0]}")
    return max(t for t, _r in replies)


def list_rtt(
    d: VsmdProc, pipe: AdminPipe, reps: int, expect: int
) -> tuple[list[float], list[float]]:
    """ms of ``list`` (all VSMs) through VsmClient and through a pre-opened channel."""
    client_ms: list[float] = []
    raw_ms: list[float] = []
    with d.client() as c:
        got = len(c.list_child_vsms())
        if got != expect:
            raise BenchError(f"list returned {got} VSMs, expected {expect}")
        for _ in range(reps):
            t = time.perf_counter()
            c.list_child_vsms()
            client_ms.append(_ms(time.perf_counter() - t))
    for _ in range(reps):
        took, reply = pipe.one(ListVsms())
        if not reply.get("ok"):
            raise BenchError(f"list refused: {reply.get('error')}")
        raw_ms.append(_ms(took))
    return client_ms, raw_ms


def run_timed(cmd: Sequence[str], env: dict[str, str] | None, reps: int) -> tuple[list[float], str]:
    """Whole-process ms of a command, repeated; and the last stdout."""
    out: list[float] = []
    stdout = ""
    for _ in range(reps):
        t = time.perf_counter()
        done = subprocess.run(
            list(cmd), env=env, capture_output=True, text=True, timeout=120, check=False
        )
        out.append(_ms(time.perf_counter() - t))
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd[:3])} exited {done.returncode}: {done.stderr[-300:]}")
        stdout = done.stdout
    return out, stdout


def cli_list(d: VsmdProc, reps: int) -> list[float]:
    ms, _out = run_timed([str(BIN / "vsmctl"), "list", "--json"], d.env, reps)
    return ms


def cli_spawn(d: VsmdProc, pipe: AdminPipe, reps: int) -> list[float]:
    """Whole-process ms of ``vsmctl spawn -q``; the VSMs are terminated afterwards."""
    ms: list[float] = []
    ids: list[str] = []
    try:
        for _ in range(reps):
            one, out = run_timed([str(BIN / "vsmctl"), "spawn", "-q"], d.env, 1)
            ms.extend(one)
            ids.append(out.strip())
    finally:
        terminate(pipe, ids, 120.0)
    return ms


def tree_total(fanout: int, levels: int) -> int:
    return sum(fanout**i for i in range(levels + 1))


def tree(d: VsmdProc, pipe: AdminPipe, fanout: int, levels: int) -> tuple[float, float]:
    """A root with the built-in ``tree`` agent grows fanout**levels leaves through the daemon;
    (s from the root's spawn request until every VSM reported ready, s to terminate the root)."""
    total = tree_total(fanout, levels)
    listener = ReadyListener(d.broker_url, bind=(f"{d.namespace}.recursive", "up.#.ready"))
    try:
        start = time.perf_counter()
        _took, reply = pipe.one(
            Spawn(name="tree", agent="tree", config={"fanout": fanout, "levels": levels}), 120.0
        )
        if not reply.get("ok"):
            raise BenchError(f"tree root refused: {reply.get('error')}")
        root = reply["result"]["id"]
        try:
            arrivals = listener.wait_for(total, 300.0)
        except BenchError:
            terminate(pipe, [root], 300.0)
            raise
        up = max(at for at, _b in arrivals) - start
    finally:
        listener.close()
    with d.client() as c:
        running = sum(1 for v in c.list_child_vsms() if v.status == "running")
    if running != total:
        terminate(pipe, [root], 300.0)
        raise BenchError(f"tree: {running} of {total} VSMs running")
    return up, terminate(pipe, [root], 300.0)


def crash_restart(d: VsmdProc, reps: int) -> tuple[list[float], list[float]]:
    """ms from SIGKILL of a permanent VSM until it runs again, and the part of it that is not
    the configured backoff (the delay the daemon announced in its restart_scheduled event).

    A fresh VSM each time, so every crash is a first crash (the shortest backoff)."""
    total_ms: list[float] = []
    beyond_ms: list[float] = []
    policy = Policy(restart="permanent")
    with d.client() as c:
        for _ in range(reps):
            info = c.spawn_recursive_vsm(None, SpawnConfig(policy=policy))
            since = c.events()[0]
            assert info.pid is not None
            t = time.perf_counter()
            os.kill(info.pid, signal.SIGKILL)
            while True:
                now = c.show(info.id)
                if now.status == "running" and now.pid not in (None, info.pid):
                    break
                time.sleep(0.001)
            took = _ms(time.perf_counter() - t)
            delays = [
                e["details"].get("delay", 0.0)
                for e in c.events(since)[1]
                if e["kind"] == "restart_scheduled" and e["vsm_id"] == info.id
            ]
            total_ms.append(took)
            beyond_ms.append(took - _ms(float(delays[0])) if delays else took)
            c.terminate_child_vsm(info.id)
    return total_ms, beyond_ms
