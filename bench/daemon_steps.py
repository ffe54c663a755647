"""The daemon's own time per spawn, by step, from its counters (``spawn_steps`` in ``ping``).

Read before and after a burst; the difference over the burst's N spawns is what each step
cost per spawn. The daemon times its steps itself (vsmd/daemon/steptimes.py): wall time and
its loop thread's CPU time.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.bus import AdminPipe, BenchError
from bench.goals import num
from bench.stats import Results
from bench.tables import spread
from vsmd.daemon.steptimes import STEPS
from vsmd.protocol import Ping

# Per step: (count, wall seconds, CPU seconds) since the daemon started.
Counters = dict[str, tuple[int, float, float]]

WHAT = {
    "admission": "limits, budgets, policy, throttle, agent settings; the new record",
    "journal": "the new VSM written to the journal (SQLite)",
    "cgroups": "the VSM's cgroups made and their limits written (none with cgroups off)",
    "fork_request": "the VSM's spec, sent to the fork server",
    "ready": "the VSM's ready report, decoded and handled",
    "reply": "the answer to the spawn, encoded and published",
    "events": "events of the spawn path (refusals, restarts); none for a first start",
}


def read(pipe: AdminPipe, timeout: float = 60.0) -> Counters:
    """The daemon's per-step counters; empty from a vsmd that does not keep them."""
    _took, reply = pipe.one(Ping(), timeout)
    if not reply.get("ok"):
        raise BenchError(f"ping failed: {reply.get('error')}")
    steps: Mapping[str, Mapping[str, float]] = reply["result"].get("spawn_steps", {})
    return {
        step: (int(f["count"]), float(f["seconds"]), float(f.get("cpu_seconds", 0.0)))
        for step, f in steps.items()
    }


def record(res: Results, prefix: str, n: int, before: Counters, after: Counters) -> None:
    """ms of the daemon's wall and CPU time per spawn, by step, over a burst of ``n``."""
    ms = 1000 / n  # seconds over the whole burst -> ms per spawn
    for step, (_count, wall, cpu) in after.items():
        _c, wall0, cpu0 = before.get(step, (0, 0.0, 0.0))
        key = f"{prefix}.burst.{n}.step.{step}"
        res.add(f"{key}_ms", f"daemon per spawn: {step}", "ms", [(wall - wall0) * ms], n)
        res.add(f"{key}_cpu_ms", f"daemon CPU per spawn: {step}", "ms", [(cpu - cpu0) * ms], n)


def _largest(res: Results, prefix: str) -> int | None:
    mark = f"{prefix}.burst."
    ns = {f.n for k, f in res.figures.items() if k.startswith(mark) and ".step." in k and f.n}
    return max(ns) if ns else None


def table(res: Results, prefix: str = "vsmd") -> list[str]:
    """Markdown for the largest burst with step figures; nothing when the run has none."""
    n = _largest(res, prefix)
    if n is None:
        return []
    key = f"{prefix}.burst.{n}.step"
    walls = {s: res.median(f"{key}.{s}_ms") for s in STEPS}
    cpus = {s: res.median(f"{key}.{s}_cpu_ms") for s in STEPS}
    total_wall = sum(v or 0.0 for v in walls.values())
    total_cpu = sum(v or 0.0 for v in cpus.values())
    rows = []
    for s in STEPS:
        wall, cpu, fig = walls[s], cpus[s], res.figures.get(f"{key}.{s}_ms")
        if wall is None or cpu is None or fig is None:
            continue
        share = f"{cpu / total_cpu:.0%}" if total_cpu else "—"
        rows.append(f"| {s} | {num(wall)} | {spread(fig)} | {num(cpu)} | {share} | {WHAT[s]} |")
    if not rows:
        return []
    return [
        f"### Daemon time per spawn, by step (burst of {n:,})",
        "",
        "The daemon's own counters (`spawn_steps` in `ping`, the `vsmd_spawn_step_*` metrics), "
        "read before and after each burst, over the N spawns; medians over the repeats. *Wall*: "
        "on the daemon's loop thread, waits for a core included (the VSMs starting take them); "
        "*CPU*: that thread's CPU time. A step inside another counts under its own name only.",
        "",
        "| step | wall ms | wall spread | CPU ms | share of CPU | what |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| all steps | {num(total_wall)} | | {num(total_cpu)} | | |",
        "",
        *_rest(res, prefix, n, total_cpu),
    ]


def _rest(res: Results, prefix: str, n: int, steps_cpu: float) -> list[str]:
    """The daemon's whole CPU per spawn in the same bursts, against what the steps cover."""
    whole = res.median(f"{prefix}.burst.{n}.cpu_daemon_s")
    if whole is None or not steps_cpu:
        return []
    per_spawn = whole / n * 1000
    text = (
        f"- The daemon process (all its threads) used {num(per_spawn)} ms of CPU per spawn in "
        f"these bursts; the steps above are {num(steps_cpu)} ms of it."
    )
    if per_spawn > steps_cpu:
        text += (
            f" The other {num(per_spawn - steps_cpu)} ms: receiving and decoding requests and "
            "ready reports, the loop, the fork-server reader thread and the sampler."
        )
    return [text, ""]
