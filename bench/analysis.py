"""Where the time goes: differences between figures of the same run, stated as numbers."""

from __future__ import annotations

from bench.goals import num
from bench.stats import Results


def _line(text: str, *values: float | None) -> str | None:
    if any(v is None for v in values):
        return None
    return "- " + text.format(*[num(v) for v in values if v is not None])


def _sizes(res: Results) -> list[int]:
    return sorted({f.n for k, f in res.figures.items() if k.startswith("floor.") and f.n})


def _spawn_lines(res: Results) -> list[str | None]:
    m = res.median
    spawn, ping_c, ping_r = (
        m("vsmd.spawn_ready_ms"),
        m("vsmd.ping.client_ms"),
        m("vsmd.ping.raw_ms"),
    )
    floor1 = m("floor.1.up_s")
    floor1_ms = floor1 * 1000 if floor1 is not None else None
    return [
        _line(
            "Admin round trip: `ping` takes {} ms through VsmClient and {} ms on an open channel; "
            "VsmClient first checks that the admin queue has a consumer (a passive declare on a "
            "new channel) on every request.",
            ping_c,
            ping_r,
        ),
        _line(
            "One spawn → ready through vsmd takes {} ms; the floor (one multiprocessing child: "
            "fork, connect, declare, consume, publish) takes {} ms, of which {} ms is the child's "
            "own broker work. vsmd's extra {} ms is the admin round trip, admission, the fork "
            "server hop, the VSM's second channel and binding, and the daemon handling "
            '"ready" before it replies.',
            spawn,
            floor1_ms,
            m("floor.1.setup_ms"),
            (spawn - floor1_ms) if spawn is not None and floor1_ms is not None else None,
        ),
        _line(
            "A fresh interpreter (exec strategy) costs {} ms per spawn against {} ms from the "
            "fork server, and {} MiB of USS per VSM against {} MiB.",
            m("exec.spawn_ready_ms"),
            spawn,
            _mem(res, "exec"),
            _mem(res, "vsmd", prefer=_mem_n(res, "exec")),
        ),
    ]


def _mem_n(res: Results, prefix: str) -> int | None:
    ns = sorted({f.n for k, f in res.figures.items() if k.startswith(f"{prefix}.mem.") and f.n})
    return ns[-1] if ns else None


def _mem(res: Results, prefix: str, prefer: int | None = None) -> float | None:
    n = prefer if prefer and res.median(f"{prefix}.mem.{prefer}.vsm_uss_mib") else None
    n = n or _mem_n(res, prefix)
    return res.median(f"{prefix}.mem.{n}.vsm_uss_mib") if n else None


# (name, key prefix with {n}, up-time key, the processes' CPU, the manager's CPU parts)
CONTENDERS = (
    ("vsmd", "vsmd.burst.{n}", "vsmd.burst.{n}.up_s", "vsms", ("daemon", "forkserver")),
    ("floor", "floor.{n}", "floor.{n}.up_s", "children", ("bench", "forkserver")),
    ("supervisord", "supervisord.{n}", "supervisord.{n}.up_s", "children", ("supervisord",)),
)


def cpu_table(res: Results) -> list[str]:
    """CPU seconds each part spent while N processes came up, against the wall time."""
    rows = []
    sizes = sorted({f.n for k, f in res.figures.items() if ".cpu_" in k and f.n})
    for n in sizes:
        for name, pre, up_key, kids, managers in CONTENDERS:
            key = pre.format(n=n)
            wall = res.median(up_key.format(n=n))
            kid = res.median(f"{key}.cpu_{kids}_s")
            if wall is None or kid is None:
                continue
            mgr = sum(res.median(f"{key}.cpu_{m}_s") or 0.0 for m in managers)
            broker = res.median(f"{key}.cpu_broker_s") or 0.0
            total = kid + mgr + broker
            rows.append(
                f"| {name} | {n:,} | {num(wall)} | {num(kid)} ({num(kid / n * 1000)} ms each) "
                f"| {num(mgr)} | {num(broker)} | {num(total)} | {num(total / wall)} |"
            )
    if not rows:
        return []
    return [
        "### CPU while N processes come up",
        "",
        "CPU seconds (time on a CPU from /proc/PID/task/*/schedstat, medians over the repeats) "
        "spent from the first request to the last ready. *Manager*: vsmd's daemon + fork "
        "server; the floor's parent (this bench process) + multiprocessing's fork server; "
        "supervisord. *Cores busy*: all these CPU seconds over the wall time.",
        "",
        "| Contender | N | wall s | processes CPU s | manager CPU s | broker CPU s "
        "| total CPU s | cores busy |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def where_time_goes(res: Results) -> list[str]:
    m = res.median
    lines = _spawn_lines(res)
    alone = m("floor.1.setup_ms")
    for n in _sizes(res):
        if n > 1:
            lines.append(
                _line(
                    f"With {n:,} started at once, a floor child's own connect + declare + "
                    "publish takes {} ms (median; p99 {}) against {} ms alone: the contenders "
                    "share the broker's connection set-up and the cores.",
                    m(f"floor.{n}.setup_ms"),
                    res.p99(f"floor.{n}.setup_ms"),
                    alone,
                )
            )
    lines.append(
        _line(
            "vsmctl: `python -c pass` takes {} ms and `python -c 'import vsmctl.app'` {} ms of "
            "the {} ms of `vsmctl list --json` with one VSM.",
            m("python.startup_ms"),
            m("python.import_vsmctl_ms"),
            m("vsmd.cli_list.1.ms"),
        )
    )
    for n in (1000, 100):
        lines.append(
            _line(
                f"`list` with {n:,} VSMs: {{}} ms through VsmClient, {{}} ms on an open channel "
                "(with one VSM: {} ms); the reply is one JSON document of every record.",
                m(f"vsmd.list.{n}.client_ms"),
                m(f"vsmd.list.{n}.raw_ms"),
                m("vsmd.list.1.raw_ms"),
            )
        )
    kept = [ln for ln in lines if ln]
    return ["## Where the time goes", "", *kept, "", *cpu_table(res)]
