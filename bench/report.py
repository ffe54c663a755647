"""docs/benchmarks.md from one run's results."""

from __future__ import annotations

import statistics
from typing import Any

from bench.goals import Goal, num
from bench.method import method
from bench.stats import Figure, Results, percentile

SECTIONS = (
    ("vsmd, default strategy (fork server with gc.freeze)", ("vsmd.", "python.")),
    ("Peers on the same broker and workload", ("floor.", "supervisord.")),
    ("vsmd, other strategies and settings", ("nofreeze.", "exec.", "nosampler.")),
)
STRATEGIES = (
    ("fork server + gc.freeze (default)", "vsmd"),
    ("fork server, no gc.freeze", "nofreeze"),
    ("exec (fresh interpreter)", "exec"),
    ("fork server + gc.freeze, agent runs gc.collect() at start", "gcfreeze"),
    ("fork server, no gc.freeze, agent runs gc.collect() at start", "gcnofreeze"),
)


def spread(fig: Figure) -> str:
    s = fig.samples
    if len(s) == 1:
        return "one run"
    if len(s) >= 20:
        return f"p99 {num(percentile(s, 99))}"
    return f"{num(min(s))} to {num(max(s))}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def _machine(m: dict[str, Any]) -> list[str]:
    mq = m.get("rabbitmq", {})
    pk = m.get("packages", {})
    rows = [
        ["Date", str(m.get("date"))],
        ["CPU", str(m.get("cpu_model"))],
        ["Cores", f"{m.get('logical_cpus')} logical ({m.get('physical_cores')} physical)"],
        ["RAM", f"{m.get('ram_gib')} GiB"],
        ["Kernel", str(m.get("kernel"))],
        ["Python", str(m.get("python"))],
        ["RabbitMQ", f"{mq.get('version')} ({mq.get('platform')}), private node of this run"],
        [
            "pika / psutil / supervisor",
            f"{pk.get('pika')} / {pk.get('psutil')} / {pk.get('supervisor')}",
        ],
        ["vsmd source", str(m.get("source"))],
        ["CPU busy in the 2 s before the run", f"{m.get('cpu_busy_before_pct')}%"],
        ["Load average at start / end", f"{m.get('loadavg_start')} / {m.get('loadavg_end')}"],
        ["Open-files limit (soft/hard)", str(m.get("open_files_limit"))],
    ]
    return ["## Machine", "", *_table(["", ""], rows)]


def _goals(goals: list[Goal]) -> list[str]:
    rows = [[g.name, g.target, g.measured, f"**{g.verdict}**"] for g in goals]
    return ["## Goals", "", *_table(["Goal", "Target", "Measured (median)", "Verdict"], rows)]


def _figures(res: Results) -> list[str]:
    out = [
        "## All figures",
        "",
        "Median of every sample; the spread is p99 when there are 20 samples or more, else "
        "the range, min to max. Raw samples are in benchmarks.json.",
        "",
    ]
    for title, prefixes in SECTIONS:
        rows = []
        for key, fig in res.figures.items():
            if key.startswith(prefixes):
                n = "" if fig.n is None else f"{fig.n:,}"
                med = statistics.median(fig.samples)
                rows.append(
                    [
                        f"`{key}`",
                        fig.label,
                        n,
                        num(med),
                        spread(fig),
                        str(len(fig.samples)),
                        fig.unit,
                    ]
                )
        if rows:
            head = ["Key", "What", "N", "Median", "Spread", "Samples", "Unit"]
            out += [f"### {title}", "", *_table(head, rows)]
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{num(a / b)}x" if a is not None and b else "—"


def _side_by_side(res: Results) -> list[str]:
    sizes = sorted(
        {
            f.n
            for k, f in res.figures.items()
            if f.n and k.endswith(".up_s") and not k.startswith("vsmd.tree")
        }
    )
    rows = []
    for n in sizes:
        v = res.median(f"vsmd.burst.{n}.up_s")
        if n == 1 and (ms := res.median("vsmd.spawn_ready_ms")) is not None:
            v = ms / 1000  # one VSM: spawn -> ready through VsmClient
        f = res.median(f"floor.{n}.up_s")
        s = res.median(f"supervisord.{n}.up_s")
        if v is None and f is None and s is None:
            continue
        rate = f"{num(n / v)}" if v else "—"
        rows.append(
            [
                f"{n:,}",
                _s(v),
                rate,
                _s(f),
                _s(s),
                _ratio(v, f),
                _ratio(s, v),
                _s(res.median(f"vsmd.burst.{n}.down_s")),
                _s(res.median(f"floor.{n}.down_s")),
                _s(res.median(f"supervisord.{n}.down_s")),
            ]
        )
    head = [
        "N",
        "vsmd up (s)",
        "vsmd VSMs/s",
        "floor up (s)",
        "supervisord up (s)",
        "vsmd/floor",
        "supervisord/vsmd",
        "vsmd down (s)",
        "floor down (s)",
        "supervisord down (s)",
    ]
    return [
        "## Side by side: N processes up and down",
        "",
        'Medians. *Up*: from the first request to the last "ready". *Down*: from the first '
        "stop request until every process is gone. N = 1 is one process at a time (for vsmd: "
        "spawn → ready through VsmClient).",
        "",
        *_table(head, rows),
    ]


def _s(v: float | None) -> str:
    return num(v) if v is not None else "—"


def _strategies(res: Results) -> list[str]:
    rows = []
    for name, p in STRATEGIES:
        lat = res.figures.get(f"{p}.spawn_ready_ms")
        ns = sorted(
            {
                f.n
                for k, f in res.figures.items()
                if k.startswith(f"{p}.mem.") and k.endswith("vsm_uss_mib") and f.n
            }
        )
        n = min(ns, key=lambda x: abs(x - 100)) if ns else None
        up = res.median(f"{p}.burst.{n}.up_s")
        rows.append(
            [
                name,
                f"{num(statistics.median(lat.samples))} / {spread(lat)}" if lat else "—",
                f"{n}" if n else "—",
                f"{_s(up)} s ({num(n / up)}/s)" if up and n else "—",
                _s(res.median(f"{p}.mem.{n}.vsm_uss_mib")),
                _s(res.median(f"{p}.mem.{n}.vsm_pss_mib")),
                _s(res.median(f"{p}.mem.{n}.vsm_rss_mib")),
            ]
        )
    head = [
        "Strategy",
        "spawn→ready ms (median / spread)",
        "N",
        "burst of N",
        "USS MiB/VSM",
        "PSS MiB/VSM",
        "RSS MiB/VSM",
    ]
    return ["## Spawn strategies", "", *_table(head, rows)]


def _idle(res: Results) -> list[str]:
    rows = []
    for prefix in ("vsmd", "nosampler"):
        for n in sorted(
            {f.n for k, f in res.figures.items() if k.startswith(f"{prefix}.idle.") and f.n}
        ):

            def g(what: str, p: str = prefix, n: int = n) -> str:
                return _s(res.median(f"{p}.idle.{n}.{what}_pct"))

            rows.append(
                [
                    prefix,
                    f"{n:,}",
                    g("daemon"),
                    g("forkserver"),
                    g("vsm_each"),
                    g("vsms_total"),
                    g("broker"),
                    _s(res.median(f"{prefix}.mem.{n}.daemon_rss_mib")),
                    _s(res.median(f"{prefix}.mem.{n}.broker_rss_mib")),
                ]
            )
    head = [
        "Daemon",
        "N idle VSMs",
        "daemon %",
        "fork server %",
        "per VSM %",
        "all VSMs %",
        "broker %",
        "daemon RSS MiB",
        "broker RSS MiB",
    ]
    return [
        "## Idle cost",
        "",
        "CPU in % of one core over the idle window.",
        "",
        *_table(head, rows),
    ]


def render(data: dict[str, Any], res: Results, goals: list[Goal], extra: list[str]) -> str:
    quick = data["plan"]["quick"]
    mode = "quick (small N, indicative only)" if quick else "full"
    how = "`python -m bench --quick` (`make bench-quick`)" if quick else "`python -m bench` "
    how += "" if quick else "(`make bench`)"
    lines = [
        "# vsmd benchmarks",
        "",
        f"Generated by {how} in one run of {num(data['duration_s'])} s, mode: {mode}. "
        "Every figure below comes from this run on this machine; nothing is carried over "
        "from elsewhere. Raw samples: `benchmarks.json`.",
        "",
        *_machine(data["machine"]),
        *_goals(goals),
        *_side_by_side(res),
        *_strategies(res),
        *_idle(res),
        *extra,
        *method(data),
        *_figures(res),
    ]
    if res.failures:
        lines += ["## Failures in this run", "", *[f"- {f}" for f in res.failures], ""]
    if res.notes:
        lines += ["## Notes from the run", "", *[f"- {n}" for n in res.notes], ""]
    return "\n".join(lines).rstrip() + "\n"
