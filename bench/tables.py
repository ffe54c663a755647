"""The report's summary tables: side by side, strategies, idle cost, headline figures."""

from __future__ import annotations

import statistics

from bench.goals import num
from bench.plan import APART_GAP_S
from bench.stats import Figure, Results, percentile


def spread(fig: Figure) -> str:
    s = fig.samples
    if len(s) == 1:
        return "one run"
    if len(s) >= 20:
        return f"p99 {num(percentile(s, 99))}"
    return f"{num(min(s))} to {num(max(s))}"


def dash(v: float | None) -> str:
    """A table cell: the figure, or a dash when it was not measured."""
    return num(v) if v is not None else "—"


def bullet(text: str, *values: float | None) -> str | None:
    """A bullet of the report, or None when one of its figures was not measured."""
    known = [v for v in values if v is not None]
    if len(known) != len(values):
        return None
    return "- " + text.format(*(f"{v:,}" if isinstance(v, int) else num(v) for v in known))


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


STRATEGIES = (
    ("fork server + gc.freeze (default)", "vsmd"),
    ("fork server, no gc.freeze", "nofreeze"),
    ("fork server, no standby", "nostandby"),
    ("fork server, heap on huge pages", "huge"),
    ("exec (fresh interpreter)", "exec"),
    ("fork server + gc.freeze, agent runs gc.collect() at start", "gcfreeze"),
    ("fork server, no gc.freeze, agent runs gc.collect() at start", "gcnofreeze"),
)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{num(a / b)}x" if a is not None and b else "—"


def side_by_side(res: Results) -> list[str]:
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
        f, mp, s = (res.median(f"{p}.{n}.up_s") for p in ("floor", "mproc", "supervisord"))
        if v is None and f is None and s is None:
            continue
        rows.append(
            [
                f"{n:,}",
                _s(v),
                f"{num(n / v)}" if v else "—",
                _s(f),
                _s(mp),
                _s(s),
                _ratio(v, f),
                _ratio(mp, f),
                _ratio(s, v),
                _s(res.median(f"vsmd.burst.{n}.down_s")),
                *(_s(res.median(f"{p}.{n}.down_s")) for p in ("floor", "mproc", "supervisord")),
            ]
        )
    head = [
        "N",
        "vsmd up (s)",
        "vsmd VSMs/s",
        "floor up (s)",
        "multiprocessing up (s)",
        "supervisord up (s)",
        "vsmd/floor",
        "multiprocessing/floor",
        "supervisord/vsmd",
        "vsmd down (s)",
        "floor down (s)",
        "multiprocessing down (s)",
        "supervisord down (s)",
    ]
    return [
        "## Side by side: N processes up and down",
        "",
        'Medians. *Up*: from the first request to the last "ready". *Down*: from the first '
        "stop request until every process is gone. N = 1 is one process at a time (for vsmd: "
        "spawn → ready through VsmClient). *Floor*: a plain parent with pika imported forks N "
        "children at once, each doing the broker work of a VSM's start (connection, confirm "
        'mode, an exclusive inbox bound under four keys, a consumer, a confirmed "ready" '
        "through a topic exchange); no daemon. *multiprocessing*: its forkserver start method "
        "(children started one at a time) with the lighter workload supervisord's programs run "
        '(an exclusive queue, "ready" straight to the collector\'s queue).',
        "",
        *table(head, rows),
    ]


def _s(v: float | None) -> str:
    return num(v) if v is not None else "—"


def strategies(res: Results) -> list[str]:
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
        apart = res.figures.get(f"{p}.apart.spawn_ready_ms")
        rows.append(
            [
                name,
                f"{num(statistics.median(lat.samples))} / {spread(lat)}" if lat else "—",
                f"{num(statistics.median(apart.samples))} / {spread(apart)}" if apart else "—",
                _s(res.median(f"{p}.apart.vsm_uss_mib")),
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
        "the same, fork server idle before each",
        "USS MiB/VSM of those",
        "N",
        "burst of N",
        "USS MiB/VSM",
        "PSS MiB/VSM",
        "RSS MiB/VSM",
    ]
    intro = (
        "*spawn→ready*: one VSM at a time, each spawned as soon as the one before was "
        "terminated. *Fork server idle before each*: one at a time, "
        f"{APART_GAP_S:g} s after the last one was up (the fork server has forked its standby "
        "by then, when it has one), and the idle USS of those VSMs once all are up. *N*, "
        "*burst*, and the memory columns after it: a burst of N spawns at once."
    )
    return ["## Spawn strategies", "", intro, "", *table(head, rows)]


def idle(res: Results) -> list[str]:
    rows = []
    for prefix in ("vsmd", "nosampler", "huge"):
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
                    g("kdamond"),
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
        "kdamond %",
        "daemon RSS MiB",
        "broker RSS MiB",
    ]
    return [
        "## Idle cost",
        "",
        "CPU in % of one core over the idle window. *kdamond*: the kernel's DAMON memory "
        "monitor, which this machine runs for itself (— where it runs none, or the run did not "
        "measure it): the bench does not start it, but its work grows with the pages many "
        "processes map. *huge*: the fork server's heap on 2 MiB pages "
        "(`huge_pages = true`; the default leaves it on 4 KiB pages).",
        "",
        *table(head, rows),
    ]


HEADLINE = (
    ("spawn → ready, one VSM (VsmClient)", "vsmd.spawn_ready_ms"),
    ("terminate one VSM (VsmClient)", "vsmd.terminate_one_ms"),
    ("kill -9 -> running again (permanent VSM)", "vsmd.crash_restart_ms"),
    ("the same, less the announced backoff delay", "vsmd.crash_restart_beyond_backoff_ms"),
    ("burst: N spawns at once, until all ready", "vsmd.burst.{n}.up_s"),
    ("terminate N at once, until all gone", "vsmd.burst.{n}.down_s"),
    ("tree agent: root spawn until every VSM is ready", "vsmd.tree.{n}.up_s"),
    ("tree: terminate the root (leaves first)", "vsmd.tree.{n}.down_s"),
    ("`list` round trip (VsmClient)", "vsmd.list.{n}.client_ms"),
    ("`vsmctl list --json`, whole process", "vsmd.cli_list.{n}.ms"),
    ("`vsmctl spawn -q`, whole process", "vsmd.cli_spawn.ms"),
    ("daemon RSS", "vsmd.mem.{n}.daemon_rss_mib"),
    ("fork server RSS", "vsmd.mem.{n}.forkserver_rss_mib"),
    ("idle VSM USS", "vsmd.mem.{n}.vsm_uss_mib"),
    ("idle VSM PSS", "vsmd.mem.{n}.vsm_pss_mib"),
    ("idle VSM RSS", "vsmd.mem.{n}.vsm_rss_mib"),
)


def headline(res: Results) -> list[str]:
    """vsmd's own figures (default strategy) by N, in the order an operator meets them."""
    rows = []
    for label, pattern in HEADLINE:
        start, _, end = pattern.partition("{n}")
        for key, fig in res.figures.items():
            if key == pattern or (end and key.startswith(start) and key.endswith(end)):
                med = statistics.median(fig.samples)
                n = "" if fig.n is None else f"{fig.n:,}"
                rows.append(
                    [label, n, f"{num(med)} {fig.unit}", spread(fig), str(len(fig.samples))]
                )
    if not rows:
        return []
    head = ["vsmd (fork server + gc.freeze)", "N", "Median", "Spread", "Samples"]
    return ["## Headline figures", "", *table(head, rows)]
