"""Today's VSM runtime next to the one before the asyncio rewrite, in one run.

The goal says spawn -> ready and an idle VSM's USS must not be worse than before VSMs ran on
one asyncio loop. Figures copied from a run on another day cannot judge that (this machine's
speed moves by 2x from day to day), so this step takes the code from before that change out of
git, starts it as a second daemon on the bench's broker next to today's, and measures both in
turns: spawn -> ready of one VSM, old and new alternating; then N idle VSMs on one side at a
time (the burst that brings them up, and their USS once it held still)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import suite
from bench import vsmd_figs as figs
from bench.bus import AdminPipe, BenchError
from bench.resources import memory
from bench.stats import log
from bench.vsmd_proc import BIG_CONFIG, REPO, VsmdProc, new_namespace
from vsmd.protocol import Ping, Spawn

PREFIX = "before"
# The parent of git d0d971f "VSMs run on one asyncio loop (aio-pika)...": the last tree whose
# VSMs ran on pika in threads, the runtime the goal compares against.
OLD_REV = "d0d971f^"
SIDES = ("old", "now")
LABELS = {"old": f"before the asyncio runtime ({OLD_REV})", "now": "today"}
ROUNDS = 2  # idle batches per side, in the order old, now, now, old
IDLE_S = 3.0  # how long the VSMs idle before their USS may count
SETTLED_MIB = 0.01  # median USS moving less than this between two readings: settled
SETTLE_TIMEOUT = 30.0

Side = tuple[VsmdProc, AdminPipe]


def sizes(quick: bool) -> tuple[int, int]:
    """(sequential spawns per side, idle VSMs per side)."""
    return (10, 20) if quick else (100, 100)


def run_before(ctx: suite.Ctx) -> None:
    tree = ctx.workdir / "before-tree"
    why = extract_old_tree(tree)
    if why is not None:
        ctx.res.note(f"before the asyncio runtime: not measured, the old tree is missing: {why}")
        return
    spawns, n = sizes(ctx.plan.quick)
    with old_daemon(ctx, tree) as old, suite.daemon(ctx, "now") as now:
        sides = {"old": old, "now": now}
        step = functools.partial(_spawn_turns, ctx, sides, spawns)
        suite.guarded(ctx, "before: spawn latency", step)
        for rnd in range(ROUNDS):
            for side in _order(rnd):
                step = functools.partial(_idle_turn, ctx, side, sides[side], n)
                suite.guarded(ctx, f"before: {n} idle VSMs, {side}", step)


def _order(rnd: int) -> tuple[str, ...]:
    """old, now; then now, old: a drift of the machine's speed falls on both sides alike."""
    return SIDES if rnd % 2 == 0 else SIDES[::-1]


# --- the old daemon ---------------------------------------------------------------------------


def extract_old_tree(dest: Path) -> str | None:
    """OLD_REV's vsmd/ and vsmctl/ under ``dest``; None, or why they could not be had (no
    git, not a clone, a shallow clone without that commit)."""
    cmd = ["git", "-C", str(REPO), "archive", "--format=tar", OLD_REV, "vsmd", "vsmctl"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"git archive {OLD_REV}: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        return f"git archive {OLD_REV} exited {done.returncode}: {err[-1] if err else ''}"
    dest.mkdir(parents=True, exist_ok=True)
    # The archive is this repository's own history, not outside input.
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(dest)
    return None


def _old_env(tree: Path, namespace: str, url: str) -> dict[str, str]:
    """Only the old tree on PYTHONPATH: its ``vsmd`` comes before the installed one (an
    editable install's finder is asked last), for the daemon and the fork server it starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSM_")}
    env.update(VSM_NAMESPACE=namespace, VSM_BROKER_URL=url, PYTHONPATH=str(tree))
    return env


@contextlib.contextmanager
def old_daemon(ctx: suite.Ctx, tree: Path) -> Iterator[Side]:
    """The old ``vsmd run --config`` on the bench's broker. The installed ``vsmd`` script
    runs today's CLI module, which the old tree does not have, so the old one's typer app is
    called by hand; ``-P`` keeps the working directory off the path. Today's tree has no
    ``vsmd/cli.py``: had the old tree not shadowed it, the start would fail, not mix."""
    log("starting the old vsmd (before the asyncio runtime)")
    state = ctx.workdir / "vsmd-before-old"
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "vsmd.toml"
    # BIG_CONFIG's options all exist in the old Config; newer ones (trust) it would refuse.
    options = {"state_dir": str(state), **BIG_CONFIG}
    cfg.write_text("[vsmd]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
    main = "from vsmd.cli import main; main()"
    cmd = [sys.executable, "-P", "-c", main, "run", "--config", str(cfg)]
    ns = new_namespace("old")
    log_path = state / "vsmd.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=_old_env(tree, ns, ctx.url),
            cwd=state,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    d = VsmdProc(ns, ctx.url, proc, log_path)
    pipe: AdminPipe | None = None
    try:
        pipe = AdminPipe(ctx.url, ns)
        _wait_ready(d, pipe)
        yield d, pipe
    finally:
        if pipe is not None:
            pipe.close()
        suite.stop_daemon(ctx, d, "old vsmd")


def _wait_ready(d: VsmdProc, pipe: AdminPipe, timeout: float = 60.0) -> None:
    """Until the old daemon answers a ping and its fork server is up. A ping sent before the
    admin queue exists is dropped by the broker: each try waits one second for its reply."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise BenchError(f"old vsmd exited with {d.proc.returncode}: {d.log_problems()}")
        with contextlib.suppress(BenchError):
            _took, reply = pipe.one(Ping(), 1.0)
            if reply.get("ok") and d.forkserver_pid() is not None:
                return
        time.sleep(0.1)
    raise BenchError(f"old vsmd did not answer within {timeout:g} s")


# --- the measurements -------------------------------------------------------------------------


def _spawn_once(pipe: AdminPipe) -> float:
    """ms from a spawn request to its reply, which both daemons send once the VSM is ready;
    the request has no field the old protocol lacks. Then the VSM is terminated."""
    took, reply = pipe.one(Spawn(), 60.0)
    if not reply.get("ok"):
        raise BenchError(f"spawn refused: {reply.get('error')}")
    figs.terminate(pipe, [reply["result"]["id"]], 60.0)
    return took * 1e3


def _spawn_turns(ctx: suite.Ctx, sides: dict[str, Side], reps: int) -> None:
    took: dict[str, list[float]] = {side: [] for side in SIDES}
    for _d, pipe in sides.values():
        _spawn_once(pipe)  # the first fork after start pays for cold caches: not counted
    for rnd in range(reps):
        for side in _order(rnd):
            took[side].append(_spawn_once(sides[side][1]))
    for side, ms in took.items():
        label = f"spawn → ready, one VSM (open channel), {LABELS[side]}"
        ctx.res.add(f"{PREFIX}.{side}.spawn_ready_ms", label, "ms", ms, 1)
    log(f"before: spawn → ready p50 {_p50(took['old'])} ms old, {_p50(took['now'])} ms now")


def _p50(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f}" if ms else "—"


def _idle_turn(ctx: suite.Ctx, side: str, daemon: Side, n: int) -> None:
    """``n`` VSMs at once on one side (the other has none), idle until their USS holds
    still, measured, terminated."""
    d, pipe = daemon
    timeout = 60.0 + 0.5 * n
    suite.pause(ctx, f"before: {n} idle VSMs, {side}")
    up, ids = figs.burst_up(pipe, n, timeout)
    try:
        key, label = f"{PREFIX}.{side}", LABELS[side]
        what = f"burst: N spawns at once, until all ready, {label}"
        ctx.res.add(f"{key}.burst.{n}.up_s", what, "s", [up], n)
        log(f"before: {n} up in {up:.2f} s ({side})")
        _settle(ctx, d, n, side)
        # No broker pid: its RSS is the bench's node, the same for both sides.
        for kind, mib in memory(d, None).items():
            ctx.res.add(f"{key}.mem.{n}.{kind}_mib", f"memory: {kind}, {label}", "MiB", mib, n)
    finally:
        figs.terminate(pipe, ids, timeout)
    _wait_gone(ctx, d, side)


def _settle(ctx: suite.Ctx, d: VsmdProc, n: int, side: str) -> None:
    """Until the VSMs have idled IDLE_S and their median USS moved less than SETTLED_MIB
    between two readings: VSMs still touch pages in their first moments up."""
    start = time.monotonic()
    last: float | None = None
    while time.monotonic() - start < SETTLE_TIMEOUT:
        uss = memory(d, None)["vsm_uss"]
        median = statistics.median(uss) if len(uss) == n else None
        idled = time.monotonic() - start >= IDLE_S
        if idled and median is not None and last is not None and abs(median - last) < SETTLED_MIB:
            return
        last = median
        time.sleep(0.5)
    seen = len(memory(d, None)["vsm_uss"])
    ctx.res.note(f"before ({side}): USS not settled after {SETTLE_TIMEOUT:g} s ({seen} of {n})")


def _wait_gone(ctx: suite.Ctx, d: VsmdProc, side: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while d.vsm_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    if d.vsm_pids():
        ctx.res.note(f"before ({side}): VSM processes left {timeout:g} s after terminate")
