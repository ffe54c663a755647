"""The run: vsmd with each strategy, the floor, multiprocessing and supervisord, one after the
other, on one private broker node, with a pause before each run until the broker has closed
the last one's connections. Every step is guarded: a failure is recorded and the run goes on."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import daemon_steps, peers
from bench import vsmd_figs as figs
from bench.bus import AdminPipe
from bench.plan import APART_GAP_S, Plan
from bench.resources import CpuWindow, broker_settled, idle_cpu, memory, memory_monitors
from bench.stats import Results, log
from bench.vsmd_proc import BIG_CONFIG, VsmdProc, start_vsmd
from vsmd.config import Config
from vsmd.protocol import Spawn


@dataclass
class Ctx:
    url: str
    workdir: Path
    broker_pid: int | None
    plan: Plan
    res: Results


def vsmd_config(**extra: object) -> dict[str, object]:
    """The bench's daemon config, limited to options this vsmd knows."""
    known = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in {**BIG_CONFIG, **extra}.items() if k in known}


def sampler_configurable() -> bool:
    return "sample_interval" in {f.name for f in dataclasses.fields(Config)}


def guarded(ctx: Ctx, what: str, fn: Callable[[], None]) -> bool:
    try:
        fn()
        return True
    except Exception as exc:
        ctx.res.fail(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stdout)
        return False


@contextlib.contextmanager
def daemon(ctx: Ctx, tag: str, **extra: object) -> Iterator[tuple[VsmdProc, AdminPipe]]:
    """``own_node=True`` in ``extra``: on an embedded node of its own, not the bench's."""
    own_node = bool(extra.pop("own_node", False))
    log(f"starting vsmd ({tag})")
    d = start_vsmd(ctx.url, ctx.workdir / f"vsmd-{tag}", tag, vsmd_config(**extra), own_node)
    pipe = AdminPipe(d.broker_url, d.namespace)
    try:
        yield d, pipe
    finally:
        pipe.close()
        stop_daemon(ctx, d, f"vsmd ({tag})")


def stop_daemon(ctx: Ctx, d: VsmdProc, who: str) -> None:
    """Stop it; what outlived it fails the run, what it logged is noted."""
    left = d.stop()
    if left:
        ctx.res.fail(f"{who}: processes outlived the daemon and were killed: {left}")
    problems = d.log_problems()
    if problems:
        ctx.res.note(f"{who} logged: " + " | ".join(problems))


def measure_state(ctx: Ctx, d: VsmdProc, pipe: AdminPipe, prefix: str, n: int, admin: bool) -> None:
    """With ``n`` idle VSMs up: admin round trips, vsmctl, idle CPU, then memory."""
    res, plan = ctx.res, ctx.plan
    alive = len(d.vsm_pids())
    if alive != n:
        res.note(f"{prefix}: {alive} VSM processes seen where {n} were expected")
    if admin:
        client, raw = figs.list_rtt(d, pipe, plan.list_reps, n)
        res.add(f"{prefix}.list.{n}.client_ms", "`list` round trip (VsmClient)", "ms", client, n)
        res.add(f"{prefix}.list.{n}.raw_ms", "`list` round trip (open channel)", "ms", raw, n)
        cli = figs.cli_list(d, plan.cli_reps)
        res.add(f"{prefix}.cli_list.{n}.ms", "`vsmctl list --json` whole process", "ms", cli, n)
    for key, pct in idle_cpu(d, ctx.broker_pid, plan.idle_seconds).items():
        res.add(f"{prefix}.idle.{n}.{key}_pct", f"idle CPU: {key}", "% of a core", [pct], n)
    for key, mib in memory(d, ctx.broker_pid).items():
        res.add(f"{prefix}.mem.{n}.{key}_mib", f"memory: {key}", "MiB", mib, n)


def one_burst(
    ctx: Ctx,
    d: VsmdProc,
    pipe: AdminPipe,
    prefix: str,
    n: int,
    measure: bool,
    admin: bool,
    agent: str | None = None,
) -> None:
    timeout = 60.0 + 0.5 * n
    pause(ctx, f"{prefix} burst of {n}")
    managers: dict[str, list[int | None]] = {
        # A daemon on a node of its own (the trust runs) loads that node, not the bench's.
        "broker": [d.own_broker_pid() or ctx.broker_pid],
        "bench": [os.getpid()],
        "daemon": [d.pid],
        "forkserver": [d.forkserver_pid()],
        **memory_monitors(),  # the machine's, where it runs them: they share our cores
    }
    steps_before = daemon_steps.read(pipe)  # before the CPU window: its ping is not the burst's
    window = CpuWindow(managers)
    up, ids = figs.burst_up(pipe, n, timeout, agent)
    add_cpu(ctx, f"{prefix}.burst.{n}", n, window.stop({"vsms": d.vsm_pids()}))
    daemon_steps.record(ctx.res, prefix, n, steps_before, daemon_steps.read(pipe))
    ctx.res.add(
        f"{prefix}.burst.{n}.up_s", "burst: N spawns at once, until all ready", "s", [up], n
    )
    log(f"{prefix}: {n} up in {up:.2f} s ({n / up:.0f}/s)")
    try:
        if measure:
            measure_state(ctx, d, pipe, prefix, n, admin)
    finally:
        window = CpuWindow(managers)
        down = figs.terminate(pipe, ids, timeout)
        add_cpu(ctx, f"{prefix}.burst.{n}.down", n, window.stop({}), "terminating")
    ctx.res.add(f"{prefix}.burst.{n}.down_s", "terminate N at once, until all gone", "s", [down], n)
    deadline = time.monotonic() + 10
    while d.vsm_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    if d.vsm_pids():
        ctx.res.note(f"{prefix}: {len(d.vsm_pids())} VSM processes left 10 s after terminate")


def bursts(
    ctx: Ctx,
    d: VsmdProc,
    pipe: AdminPipe,
    prefix: str,
    sizes: Sequence[tuple[int, int]],
    state: Sequence[int],
    admin: bool,
    agent: str | None = None,
) -> None:
    for n, reps in sizes:
        for rep in range(reps):
            measure = n in state and rep == reps - 1
            step = functools.partial(one_burst, ctx, d, pipe, prefix, n, measure, admin, agent)
            if not guarded(ctx, f"{prefix} burst of {n}", step):
                break


def single_state(ctx: Ctx, d: VsmdProc, pipe: AdminPipe) -> None:
    _took, reply = pipe.one(Spawn(), 60.0)
    vsm_id = reply["result"]["id"]
    try:
        measure_state(ctx, d, pipe, "vsmd", 1, admin=True)
    finally:
        figs.terminate(pipe, [vsm_id], 60.0)


def run_vsmd_main(ctx: Ctx) -> None:
    """The default daemon: fork server with gc.freeze. Every figure of the goals."""
    plan, res = ctx.plan, ctx.res
    with daemon(ctx, "forkserver") as (d, pipe):

        def ping() -> None:
            client, raw = figs.ping_rtt(d, pipe, plan.ping_reps)
            res.add("vsmd.ping.client_ms", "`ping` round trip (VsmClient)", "ms", client)
            res.add("vsmd.ping.raw_ms", "`ping` round trip (open channel)", "ms", raw)

        def latency() -> None:
            spawn, term = figs.sequential(d, plan.latency_reps)
            res.add("vsmd.spawn_ready_ms", "spawn -> ready, one VSM (VsmClient)", "ms", spawn, 1)
            res.add("vsmd.terminate_one_ms", "terminate one VSM (VsmClient)", "ms", term, 1)
            add_apart(ctx, d, "vsmd")

        def restart() -> None:
            total, beyond = figs.crash_restart(d, max(3, plan.latency_reps // 5))
            res.add(
                "vsmd.crash_restart_ms", "kill -9 -> running again (permanent VSM)", "ms", total, 1
            )
            res.add(
                "vsmd.crash_restart_beyond_backoff_ms",
                "kill -9 -> running again, less the backoff delay",
                "ms",
                beyond,
                1,
            )

        def cli_spawn() -> None:
            ms = figs.cli_spawn(d, pipe, plan.cli_reps)
            res.add("vsmd.cli_spawn.ms", "`vsmctl spawn -q` whole process", "ms", ms, 1)

        def baselines() -> None:
            py = sys.executable
            for key, label, cmd in (
                ("python.startup_ms", "`python -c pass`", [py, "-c", "pass"]),
                (
                    "python.import_vsmctl_ms",
                    "`python -c 'import vsmctl.app'`",
                    [py, "-c", "import vsmctl.app"],
                ),
            ):
                res.add(key, label, "ms", figs.run_timed(cmd, None, plan.cli_reps)[0])

        guarded(ctx, "ping", ping)
        guarded(ctx, "spawn latency", latency)
        guarded(ctx, "crash -> restarted", restart)
        guarded(ctx, "state with one VSM", functools.partial(single_state, ctx, d, pipe))
        bursts(ctx, d, pipe, "vsmd", plan.bursts, plan.state_sizes, admin=True)
        guarded(ctx, "vsmctl spawn", cli_spawn)
        guarded(ctx, "baselines", baselines)
        for _ in range(plan.tree_repeats):
            guarded(ctx, "tree", functools.partial(one_tree, ctx, d, pipe))


def one_tree(ctx: Ctx, d: VsmdProc, pipe: AdminPipe) -> None:
    fanout, levels = ctx.plan.tree
    total = figs.tree_total(fanout, levels)
    up, down = figs.tree(d, pipe, fanout, levels)
    log(f"tree of {total}: up {up:.2f} s, down {down:.2f} s")
    ctx.res.add(
        f"vsmd.tree.{total}.up_s", "tree agent: root spawn until all ready", "s", [up], total
    )
    ctx.res.add(f"vsmd.tree.{total}.down_s", "terminate the tree's root", "s", [down], total)


def add_apart(ctx: Ctx, d: VsmdProc, prefix: str) -> None:
    """Spawns with the fork server idle before each (what its standby is for), and the idle
    USS of the VSMs they made."""
    spawn, uss = figs.apart(d, ctx.plan.apart_reps, APART_GAP_S)
    label = f"spawn -> ready, one VSM, {APART_GAP_S:g} s after the last"
    ctx.res.add(f"{prefix}.apart.spawn_ready_ms", label, "ms", spawn, 1)
    label = "idle USS of those VSMs, all up"
    ctx.res.add(f"{prefix}.apart.vsm_uss_mib", label, "MiB", uss, len(uss))


def run_variant(
    ctx: Ctx,
    prefix: str,
    latency_reps: int,
    burst: tuple[int, int],
    agent: str | None = None,
    **extra: object,
) -> None:
    with daemon(ctx, prefix, **extra) as (d, pipe):

        def latency() -> None:
            spawn, _term = figs.sequential(d, latency_reps)
            ctx.res.add(f"{prefix}.spawn_ready_ms", "spawn -> ready, one VSM", "ms", spawn, 1)
            add_apart(ctx, d, prefix)

        if latency_reps:
            guarded(ctx, f"{prefix} spawn latency", latency)
        bursts(ctx, d, pipe, prefix, [burst], [burst[0]], admin=False, agent=agent)


def run_trust(ctx: Ctx) -> None:
    """The trust boundary off and on, each daemon on an embedded node of its own (a secure
    daemon sets its node up itself), both up at once and measured in turns, so load that
    comes and goes on the machine falls on both: spawn -> ready, then bursts."""
    n = max(n for n, _reps in ctx.plan.bursts if n <= 300)
    with (
        daemon(ctx, "trustoff", own_node=True, trust="cooperative") as (off, off_pipe),
        daemon(ctx, "truston", own_node=True, trust="secure") as (on, on_pipe),
    ):
        pairs = (("trustoff", off, off_pipe), ("truston", on, on_pipe))

        def latency() -> None:
            samples: dict[str, list[float]] = {"trustoff": [], "truston": []}
            for _ in range(ctx.plan.latency_reps):
                for prefix, d, _pipe in pairs:
                    spawn, _term = figs.sequential(d, 1)
                    samples[prefix] += spawn
            for prefix, ms in samples.items():
                ctx.res.add(f"{prefix}.spawn_ready_ms", "spawn -> ready, one VSM", "ms", ms, 1)

        guarded(ctx, "trust: spawn latency", latency)
        for _rep in range(2):
            for prefix, d, pipe in pairs:
                bursts(ctx, d, pipe, prefix, [(n, 1)], [], admin=False)


def run_sampler_off(ctx: Ctx) -> None:
    """The default daemon again with the sampler's interval at a day: its idle CPU without it."""
    n = max(ctx.plan.state_sizes)
    with daemon(ctx, "nosampler", sample_interval=86400.0) as (d, pipe):
        bursts(ctx, d, pipe, "nosampler", [(n, 1)], [n], admin=False)


def add_cpu(ctx: Ctx, key: str, n: int, cpu: dict[str, float], phase: str = "coming up") -> None:
    for who, secs in cpu.items():
        ctx.res.add(f"{key}.cpu_{who}_s", f"CPU while {phase}: {who}", "CPU s", [secs], n)


def pause(ctx: Ctx, before: str) -> None:
    """Between two runs: until the broker has closed the last one's connections."""
    if not broker_settled(ctx.broker_pid):
        ctx.res.note(f"before {before}: the broker's open files still moved after 30 s")


def _peer_once(ctx: Ctx, prefix: str, n: int, run: Callable[[int], peers.PeerRun]) -> None:
    pause(ctx, f"{prefix} {n}")
    r = run(n)
    up, down, setup = r.up, r.down, r.setup_ms
    add_cpu(ctx, f"{prefix}.{n}", n, r.cpu)
    log(f"{prefix}: {n} up in {up:.2f} s ({n / up:.0f}/s), down in {down:.2f} s")
    ctx.res.add(f"{prefix}.{n}.up_s", "N processes started at once, until all ready", "s", [up], n)
    ctx.res.add(
        f"{prefix}.{n}.down_s", "N processes stopped at once, until all gone", "s", [down], n
    )
    ctx.res.add(f"{prefix}.{n}.setup_ms", "child's own broker work until ready", "ms", setup, n)


def _peer_runs(ctx: Ctx, prefix: str, peer: peers.Floor | peers.Multiprocessing) -> None:
    try:
        for n, reps, _sup in ctx.plan.peers:
            for _ in range(reps):
                step = functools.partial(_peer_once, ctx, prefix, n, peer.run)
                guarded(ctx, f"{prefix} {n}", step)
    finally:
        peer.close()


def run_floor(ctx: Ctx) -> None:
    log("floor: a plain pre-imported parent forking children that do a VSM's broker work")
    _peer_runs(ctx, "floor", peers.Floor(ctx.url, ctx.broker_pid))


def run_multiprocessing(ctx: Ctx) -> None:
    log("multiprocessing: forkserver start method")
    _peer_runs(ctx, "mproc", peers.Multiprocessing(ctx.url, ctx.broker_pid))


def run_supervisord(ctx: Ctx) -> None:
    for n, _floor, reps in ctx.plan.peers:
        if not reps:
            continue
        log(f"supervisord with {n} programs")
        sup = peers.Supervisord(ctx.url, ctx.workdir / f"supervisord-{n}", n, ctx.broker_pid)
        try:
            for _ in range(reps):
                step = functools.partial(_peer_once, ctx, "supervisord", n, sup.run)
                guarded(ctx, f"supervisord {n}", step)
        finally:
            sup.close()
