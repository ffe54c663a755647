"""Where the time goes: differences between figures of the same run, stated as numbers."""

from __future__ import annotations

from bench import daemon_steps
from bench.goals import num
from bench.stats import Results


def _line(text: str, *values: float | None) -> str | None:
    if any(v is None for v in values):
        return None
    return "- " + text.format(*[num(v) for v in values if v is not None])


def _sizes(res: Results) -> list[int]:
    return sorted({f.n for k, f in res.figures.items() if k.startswith("floor.") and f.n})


def _ping_line(client: float | None, raw: float | None) -> str | None:
    if client is None or raw is None:
        return None
    diff = client - raw
    what = (
        f"the client library's own work per call is the {num(diff)} ms difference"
        if diff > 0
        else "through VsmClient it was no slower"
    )
    return (
        f"- Admin round trip: `ping` takes {num(client)} ms through VsmClient (one client, one "
        f"request at a time) and {num(raw)} ms as a bare request on an open channel: {what}."
    )


def _floor_line(
    spawn: float | None, floor: float | None, setup: float | None, unready: float | None
) -> str | None:
    """``unready``: spawn → ready of this run's daemon without the fork server's standby."""
    if spawn is None or floor is None or setup is None:
        return None
    diff = spawn - floor
    text = (
        f"- One spawn → ready through vsmd takes {num(spawn)} ms; the floor (one forked "
        'child doing a VSM\'s broker work until its confirmed "ready") takes '
        f"{num(floor)} ms, {num(setup)} ms of it the child's own broker work (connection, "
        f"inbox and bindings: {setup / spawn:.0%} of vsmd's spawn → ready)."
    )
    if diff > 0.5:
        return text + (
            f" vsmd's extra {num(diff)} ms covers the admin round trip, admission, the hop "
            "through the fork server, what a VSM sets up beyond the floor's child and the "
            'daemon handling "ready" before it replies.'
        )
    if diff < -0.5:
        without = (
            f" Without the standby (`spawn_standby = false`, another daemon of this run) "
            f"spawn → ready took {num(unready)} ms, {num(unready - spawn)} ms more: that much "
            "of the difference is the standby's, which a VSM's fork server forks and connects "
            'ahead of the spawn (docs/spawning.md, "Standby"); the rest lies in the '
            "child's own start (the author's reading: the floor's child connects with pika, a VSM "
            "with its own client, vsmd/amqp/)."
            if unready is not None
            else ""
        )
        return text + f" vsmd takes {num(-diff)} ms less than the floor.{without}"
    return text + (
        f" vsmd is level with the floor ({num(diff)} ms): its own steps (admin round trip, "
        'admission, fork-server hop, handling "ready") cost no more than the noise between '
        "the two series."
    )


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
        _ping_line(ping_c, ping_r),
        _floor_line(spawn, floor1_ms, m("floor.1.setup_ms"), m("nostandby.spawn_ready_ms")),
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
    ("floor", "floor.{n}", "floor.{n}.up_s", "children", ("bench", "parent")),
    ("multiprocessing", "mproc.{n}", "mproc.{n}.up_s", "children", ("bench", "forkserver")),
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
            kdamond = res.median(f"{key}.cpu_kdamond_s")
            rows.append(
                f"| {name} | {n:,} | {num(wall)} | {num(kid)} ({num(kid / n * 1000)} ms each) "
                f"| {num(mgr)} | {num(broker)} | {num(total)} | {num(total / wall)} "
                f"| {num(kdamond) if kdamond is not None else '—'} |"
            )
    if not rows:
        return []
    return [
        "### CPU while N processes come up",
        "",
        "CPU seconds (time on a CPU from /proc/PID/task/*/schedstat, medians over the repeats) "
        "spent from the first request to the last ready. *Manager*: vsmd's daemon + fork "
        "server; the floor's forking parent + this bench process (it collects the "
        '"ready" messages); multiprocessing\'s fork server + this bench process; supervisord. '
        "*Cores busy*: all these CPU seconds over the wall time. *kdamond*: the machine's own "
        "DAMON memory monitor over the same window (— where it runs none, or the run did not "
        "measure it), not in the total: the bench does not start it, but it takes the same "
        "cores.",
        "",
        "| Contender | N | wall s | processes CPU s | manager CPU s | broker CPU s "
        "| total CPU s | cores busy | kdamond CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _per_process_cpu(res: Results, name: str, n: int) -> tuple[float, float] | None:
    """(CPU ms per process over all parts, cores busy) of one contender's burst of ``n``."""
    _name, pre, up_key, kids, managers = next(c for c in CONTENDERS if c[0] == name)
    key, wall = pre.format(n=n), res.median(up_key.format(n=n))
    parts = [kids, "broker", *managers]
    vals = [res.median(f"{key}.cpu_{p}_s") for p in parts]
    if wall is None or any(v is None for v in vals):
        return None
    total = sum(v or 0.0 for v in vals)
    return total / n * 1000, total / wall


def _cpu_lines(res: Results, cores: int) -> list[str | None]:
    sizes = sorted({f.n for k, f in res.figures.items() if k.endswith(".cpu_vsms_s") and f.n})
    if not sizes:
        return []
    n = sizes[-1]
    v = _per_process_cpu(res, "vsmd", n)
    f = _per_process_cpu(res, "floor", n)
    s = _per_process_cpu(res, "supervisord", n)
    up = res.median(f"vsmd.burst.{n}.up_s")
    lines = [
        _line(
            f"In a burst of {n:,} every VSM costs {{}} ms of CPU in all (its own start, the "
            "broker's side of its connection, the daemon and the fork server): all "
            f"{cores} cores busy would allow {{}} VSMs/s; vsmd reached {{}}/s with {{}} cores "
            "busy.",
            v[0] if v else None,
            cores * 1000 / v[0] if v else None,
            n / up if up else None,
            v[1] if v else None,
        )
    ]
    if v and f:
        lines.append(
            _line(
                "The floor's children, parent and the broker cost {} ms of CPU per process in "
                "all with {} cores busy; vsmd's VSMs, the broker, the daemon and the fork server "
                "cost {} ms per VSM ({}x the floor's) with {} cores busy.",
                f[0],
                f[1],
                v[0],
                v[0] / f[0],
                v[1],
            )
        )
    mp = _per_process_cpu(res, "multiprocessing", n)
    if mp:
        lines.append(
            _line(
                "multiprocessing, with a lighter workload per child (no confirm mode, no "
                "bindings), costs {} ms of CPU per process with {} cores busy: each "
                "`Process.start()` waits for the new pid from its fork server, so its children "
                "start one after the other.",
                mp[0],
                mp[1],
            )
        )
    down = f"vsmd.burst.{n}.down"
    lines.append(
        _line(
            f"Terminating {n:,} at once took {{}} s (the floor: {{}} s); meanwhile the daemon used "
            "{} CPU s, the fork server {} and the broker {}.",
            res.median(f"{down}_s"),
            res.median(f"floor.{n}.down_s"),
            res.median(f"{down}.cpu_daemon_s"),
            res.median(f"{down}.cpu_forkserver_s"),
            res.median(f"{down}.cpu_broker_s"),
        )
    )
    kid_s = res.median(f"supervisord.{n}.cpu_children_s")
    kid_v = res.median(f"vsmd.burst.{n}.cpu_vsms_s")
    if s:
        lines.append(
            _line(
                "supervisord's children use {} ms of CPU each (a fresh interpreter importing "
                "pika) against {} ms for a forked VSM.",
                kid_s / n * 1000 if kid_s is not None else None,
                kid_v / n * 1000 if kid_v is not None else None,
            )
        )
    lines.append(_stop_one(res))
    return lines


def _stop_one(res: Results) -> str | None:
    fig = res.figures.get("supervisord.1.down_s")
    if fig is None or not fig.samples:
        return None
    med = res.median("supervisord.1.down_s") or 0.0
    near_tick = [v for v in fig.samples if 0.9 <= v <= 1.2]
    text = (
        f"- Stopping one supervisord program took {num(med)} s (median of {len(fig.samples)}, "
        f"{num(min(fig.samples))} to {num(max(fig.samples))} s)"
    )
    if near_tick:
        text += (
            f"; {len(near_tick)} of them took 0.9 to 1.2 s, the length of supervisord's "
            "1 s main-loop tick"
        )
    return text + "."


def where_time_goes(res: Results, cores: int, interval: float = 1.0) -> list[str]:
    m = res.median
    lines = _spawn_lines(res)
    lines += _cpu_lines(res, cores)
    crowd = [n for n in _sizes(res) if n > 1 and m(f"floor.{n}.setup_ms") is not None]
    if crowd and m("floor.1.setup_ms") is not None:
        meds = " / ".join(num(m(f"floor.{n}.setup_ms") or 0) for n in crowd)
        p99s = " / ".join(num(res.p99(f"floor.{n}.setup_ms") or 0) for n in crowd)
        lines.append(
            f"- A floor child's own broker work (connect, inbox, bindings, consume, confirmed "
            '"ready") takes '
            f"{num(m('floor.1.setup_ms') or 0)} ms alone and {meds} ms (median; p99 {p99s}) "
            f"with {' / '.join(f'{n:,}' for n in crowd)} started at once: the contenders share "
            "the broker's connection set-up and the cores."
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
    ns = sorted({f.n for k, f in res.figures.items() if k.startswith("nosampler.idle.") and f.n})
    for n in ns[-1:]:
        on, off = m(f"vsmd.idle.{n}.daemon_pct"), m(f"nosampler.idle.{n}.daemon_pct")
        lines.append(
            _line(
                f"The sampler: with {n:,} idle VSMs the daemon uses {{}}% of a core, {{}}% with "
                f"the sampler off, i.e. about {{}} ms per pass at one pass every {interval:g} s. "
                "The pass runs on the daemon's loop in ten slices spread over the interval, so "
                "an admin request that arrives meanwhile waits for one slice at most: "
                f"compare the `list` p99 with {n:,} VSMs ({{}} ms) with its median ({{}} ms).",
                on,
                off,
                (on - off) * 10 * interval if on is not None and off is not None else None,
                res.p99(f"vsmd.list.{n}.client_ms"),
                m(f"vsmd.list.{n}.client_ms"),
            )
        )
    kept = [ln for ln in lines if ln]
    return ["## Where the time goes", "", *kept, "", *cpu_table(res), *daemon_steps.table(res)]
