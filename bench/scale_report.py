"""The report's section on the scale figure and its goal: every number comes from the run's
figures (keys ``scale.``, taken by bench/scale_step.py)."""

from __future__ import annotations

import dataclasses

from bench.goals import MET, MISSED, NOT_MEASURED, Goal, num, sizes
from bench.stats import Results
from bench.tables import bullet as _line
from bench.tables import dash as _v
from bench.tables import table

PREFIX = "scale"
MERGED = "scalemerge"  # the same growth with memory_merge on (bench/scale_step.py)
GOAL_N = 3000  # idle VSMs on the 2-core, 24 GiB machine
GOAL_LIST_MS = 50.0  # `list` round trip through VsmClient, median


def scale_ns(res: Results) -> list[int]:
    """Every N measured, 0 (no VSM up) first."""
    return sizes(res, f"{PREFIX}.", ".list_ms")


def _int(res: Results, key: str) -> int | None:
    v = res.median(f"{PREFIX}.{key}")
    return int(v) if v is not None else None


def _n_of(res: Results, key: str) -> int | None:
    """The N a figure is about."""
    fig = res.figures.get(f"{PREFIX}.{key}")
    return fig.n if fig else None


def _reps(res: Results, n: int) -> int:
    fig = res.figures.get(f"{PREFIX}.{n}.list_ms")
    return len(fig.samples) if fig else 0


def _limit(res: Results) -> float:
    return res.median(f"{PREFIX}.limit_ms") or GOAL_LIST_MS


def stop_reason(res: Results) -> tuple[str, str]:
    """(kind, words) of why growth stopped: failed, list, memory, top or early."""
    m, ns = res.median, scale_ns(res)
    failed = _int(res, "stop.failed_n")
    if failed is not None:
        return "failed", f"the batch that was to reach {failed:,} failed (see the notes)"
    last = ns[-1] if ns else 0
    p50 = m(f"{PREFIX}.{last}.list_ms")
    if p50 is not None and p50 > _limit(res):
        return "list", f"`list` took {num(p50)} ms p50 at {last:,}, over {num(_limit(res))} ms"
    need = m(f"{PREFIX}.stop.next_batch_gib")
    if need is not None:
        avail, margin = m(f"{PREFIX}.stop.available_gib"), m(f"{PREFIX}.margin_gib")
        more = _int(res, "stop.next_n") or 0
        return "memory", (
            f"{more:,} more VSMs would have needed about {_v(need)} GiB of the {_v(avail)} GiB "
            f"available, leaving less than the {_v(margin)} GiB margin"
        )
    top = _int(res, "target_n")
    if top is not None and last >= top:
        return "top", f"it reached the step's largest N, {top:,}"
    return "early", "the step ended early (see the failures)"


def _other(res: Results, n: int) -> float | None:
    """% of a core that the rest of the machine was busy in the idle window at ``n``."""
    m, k = res.median, f"{PREFIX}.{n}"
    busy = m(f"{k}.machine_idle_pct")
    who = ("daemon", "broker", "forkserver", "vsms_total", "bench", "kdamond")
    parts = [m(f"{k}.{w}_idle_pct") for w in who]
    return busy - sum(p for p in parts if p is not None) if busy is not None else None


def _cpu_rows(res: Results) -> list[list[str]]:
    m, rows = res.median, []
    for n in scale_ns(res):
        k = f"{PREFIX}.{n}"
        rows.append(
            [
                f"{n:,}",
                _v(m(f"{k}.list_ms")),
                _v(res.p99(f"{k}.list_ms")),
                _v(m(f"{k}.list_raw_ms")),
                _v(m(f"{k}.daemon_idle_pct")),
                _v(m(f"{k}.broker_idle_pct")),
                _v(m(f"{k}.vsms_total_idle_pct")),
                _v(m(f"{k}.kdamond_idle_pct")),
                _v(_other(res, n)),
                _v(m(f"{k}.up_s")),
                _v(m(f"{k}.settle_s")),
            ]
        )
    return rows


CPU_HEAD = [
    "N idle VSMs",
    "`list` p50 (ms)",
    "`list` p99 (ms)",
    "open channel p50 (ms)",
    "daemon idle (%)",
    "broker idle (%)",
    "all VSMs idle (%)",
    "kdamond idle (%)",
    "other work idle (%)",
    "batch up (s)",
    "settled after (s)",
]


def _mem_rows(res: Results) -> list[list[str]]:
    m, rows = res.median, []
    for n in scale_ns(res):
        k = f"{PREFIX}.{n}"
        uss = m(f"{k}.vsm_uss_mib")
        rows.append(
            [
                f"{n:,}",
                _v(m(f"{k}.mem_used_gib")),
                _v(m(f"{k}.mem_avail_gib")),
                _v(uss),
                _v(m(f"{k}.vsm_pss_mib")),
                _v(uss * n / 1024 if uss is not None else None),
                _v(m(f"{k}.broker_mib")),
                _v(m(f"{k}.daemon_mib")),
            ]
        )
    return rows


MEM_HEAD = [
    "N idle VSMs",
    "in use (GiB)",
    "available (GiB)",
    "USS per VSM (MiB)",
    "PSS per VSM (MiB)",
    "USS x N (GiB)",
    "broker RSS (MiB)",
    "daemon RSS (MiB)",
]


def _per(res: Results, what: str, first: int, last: int, scale: float = 1.0) -> float | None:
    """Growth of ``scale.{N}.{what}`` per VSM from N=first to N=last, times ``scale``."""
    a, b = res.median(f"{PREFIX}.{first}.{what}"), res.median(f"{PREFIX}.{last}.{what}")
    if a is None or b is None or last == first:
        return None
    return (b - a) / (last - first) * scale


def _memory_lines(res: Results, first: int, last: int) -> list[str | None]:
    m, k = res.median, f"{PREFIX}.{last}"
    per = _per(res, "mem_used_gib", first, last, 1024)
    avail, margin = m(f"{k}.mem_avail_gib"), m(f"{PREFIX}.margin_gib")
    room = None
    if avail is not None and margin is not None and per is not None and per > 0:
        room = int((avail - margin) * 1024 / per)
    uss, broker, daemon = (
        m(f"{k}.vsm_uss_mib"),
        _per(res, "broker_mib", first, last),
        _per(res, "daemon_mib", first, last),
    )
    rest = None
    if per is not None and uss is not None and broker is not None and daemon is not None:
        rest = per - uss - broker - daemon
    return [
        _line(
            f"From {first:,} to {last:,} VSMs the machine's memory in use grew by {{}} MiB per "
            "VSM (machine-wide: other work on the machine in that time counts too). Of that, "
            "the median VSM's USS is {} MiB (PSS {} MiB), the broker's RSS grew by {} MiB per "
            "VSM and the daemon's by {}; the other {} MiB per VSM shows in none of these.",
            per,
            uss,
            m(f"{k}.vsm_pss_mib"),
            broker,
            daemon,
            rest,
        ),
        _line(
            f"At that cost the {{}} GiB still available with {last:,} VSMs up hold about {{}} "
            "VSMs more before the {} GiB margin (a linear estimate).",
            avail,
            room,
            margin,
        ),
    ]


def _list_lines(res: Results, first: int, best: int, last: int) -> list[str | None]:
    """How `list` grew with N: up to the figure, and past it when that is what stopped it."""
    m, limit = res.median, _limit(res)
    slope = _per(res, "list_ms", first, best, 1000)
    p50 = m(f"{PREFIX}.{best}.list_ms")
    reach = None
    if slope and slope > 0 and p50 is not None and p50 < limit:
        reach = best + int((limit - p50) / slope * 1000)
    lines = [
        _line(
            f"`list` took {{}} ms p50 with {first:,} VSMs and {{}} ms with {best:,}: {{}} ms "
            f"more per 1,000 VSMs, on which line it reaches {num(limit)} ms at about {{}} VSMs.",
            m(f"{PREFIX}.{first}.list_ms"),
            p50,
            slope,
            reach,
        )
    ]
    if last > best:
        lines.append(
            _line(
                f"From {best:,} to {last:,} it grew by {{}} ms per 1,000 VSMs, to {{}} ms p50 and "
                "{} ms p99; as a bare request on an open channel (no VsmClient) it took {} ms "
                "p50.",
                _per(res, "list_ms", best, last, 1000),
                m(f"{PREFIX}.{last}.list_ms"),
                res.p99(f"{PREFIX}.{last}.list_ms"),
                m(f"{PREFIX}.{last}.list_raw_ms"),
            )
        )
    return lines


def _cpu_lines(res: Results, first: int, last: int, cores: int) -> list[str | None]:
    m = res.median
    return [
        _line(
            f"The daemon, where the sampler runs, used {{}}% of a core idle with {first:,} VSMs "
            f"and {{}}% with {last:,} ({{}} points per 1,000 VSMs, over idle windows of {{}} s); "
            "the broker {}% and {}%, all the VSMs together {}% at the end.",
            m(f"{PREFIX}.{first}.daemon_idle_pct"),
            m(f"{PREFIX}.{last}.daemon_idle_pct"),
            _per(res, "daemon_idle_pct", first, last, 1000),
            m(f"{PREFIX}.idle_s"),
            m(f"{PREFIX}.{first}.broker_idle_pct"),
            m(f"{PREFIX}.{last}.broker_idle_pct"),
            m(f"{PREFIX}.{last}.vsms_total_idle_pct"),
        ),
        _line(
            f"The machine's own memory monitor (kdamond) used {{}}% of a core with {first:,} "
            f"VSMs and {{}}% with {last:,}, of the machine's {cores * 100} %: it samples the "
            "pages processes map, and the `list` and CPU figures were taken on the cores it "
            "shared.",
            m(f"{PREFIX}.{first}.kdamond_idle_pct"),
            m(f"{PREFIX}.{last}.kdamond_idle_pct"),
        ),
        _line(
            "Work other than the daemon, its fork server, the broker, the VSMs, the bench and "
            "kdamond (other kernel threads included) kept up to {} % of a core busy in the idle "
            "windows.",
            max((o for n in scale_ns(res) if (o := _other(res, n)) is not None), default=None),
        ),
    ]


def _between(res: Results, best: int, kind: str) -> str:
    """Where the limit lies when `list` was what stopped growth."""
    ns = scale_ns(res)
    if kind != "list" or not ns or ns[-1] <= best:
        return ""
    return f"; the limit lies between {best:,} and {ns[-1]:,} VSMs"


def _sampler_line(res: Results) -> str | None:
    """The daemon's idle CPU here against the run's daemon with the sampler off, at one N."""
    off_ns = sizes(res, "nosampler.idle.", ".daemon_pct")
    both = [n for n in off_ns if n in scale_ns(res)]
    if not both:
        return None
    n = both[-1]
    on, off = (
        res.median(f"{PREFIX}.{n}.daemon_idle_pct"),
        res.median(f"nosampler.idle.{n}.daemon_pct"),
    )
    return _line(
        f"With {n:,} idle VSMs the daemon used {{}}% of a core here and {{}}% in this run's "
        "daemon with the sampler off (the `nosampler` step): the sampler's share is about {}%.",
        on,
        off,
        on - off if on is not None and off is not None else None,
    )


def _view(res: Results, prefix: str) -> Results:
    """The figures taken under ``prefix`` with the keys of the default run (``scale.``), so
    that one renderer serves both runs."""
    out = Results()
    for key, fig in res.figures.items():
        if key.startswith(f"{prefix}."):
            renamed = PREFIX + key[len(prefix) :]
            out.figures[renamed] = dataclasses.replace(fig, key=renamed)
    return out


def scale_section(res: Results, cores: int) -> list[str]:
    """The default run, then the one with memory_merge when it ran."""
    out = _section(res, cores, "## Scale: idle VSMs on one machine", "")
    merged = _view(res, MERGED)
    if scale_ns(merged):
        section = _section(merged, cores, "## Scale with memory_merge", _merge_lead(res))
        line = _merge_line(res, merged)
        out += section[:-1] + ([line] if line else []) + section[-1:]
    return out


def _merge_line(res: Results, merged: Results) -> str | None:
    """How far KSM got during the growth, against the merge step's settled figure."""
    ns = scale_ns(merged)
    if not ns:
        return None
    last = ns[-1]
    settled = sizes(res, "merge.", ".idle.merged_uss_mib")
    n = settled[-1] if settled else None
    return _line(
        f"With {last:,} VSMs up the median VSM's USS was {{}} MiB with memory_merge on, and "
        f"{{}} MiB in the default run at the same N; in the merge step, where {n or 0:,} VSMs "
        "were given the time for several full KSM passes, it was {} MiB.",
        merged.median(f"{PREFIX}.{last}.vsm_uss_mib"),
        res.median(f"{PREFIX}.{last}.vsm_uss_mib"),
        res.median(f"merge.{n}.idle.merged_uss_mib") if n else None,
    )


def _merge_lead(res: Results) -> str:
    m = res.median
    return (
        "The same growth with `memory_merge = true`, while the kernel's KSM scanned "
        f"{_v(m(f'{MERGED}.ksm_pages_per_s'))} pages/s (its thread used "
        f"{_v(m(f'{MERGED}.ksmd_cpu_pct'))}% of a core over the whole step). KSM merges in "
        "the background: at each N the memory figures, and the margin judged on them, hold "
        "what it had merged by then. "
    )


def _section(res: Results, cores: int, title: str, lead: str) -> list[str]:
    ns = scale_ns(res)
    if not ns:
        return []
    m, best = res.median, _int(res, "max_n") or 0
    kind, why = stop_reason(res)
    out = [
        title,
        "",
        f"{lead}One daemon on the run's private broker node; idle VSMs of the default agent added "
        f"in batches of {_int(res, 'batch_n') or 0:,} spawns at once, up to "
        f"{_int(res, 'target_n') or 0:,}. After each batch, once the daemon's and the broker's "
        "CPU stopped falling: the machine's memory (total less available), the RSS of the "
        f"broker and the daemon, USS and PSS of {_sampled(res)}, idle CPU over "
        f"{_v(m(f'{PREFIX}.idle_s'))} s with nothing asked of the daemon, and "
        f"{_reps(res, ns[0])} `list` round trips through VsmClient (and as many on an open "
        "channel), half before and half after that window. Growth stops when `list` is over "
        f"{num(_limit(res))} ms p50, when the next batch would leave less than "
        f"{_v(m(f'{PREFIX}.margin_gib'))} GiB available at the last batch's cost per VSM (a "
        "batch that does not fit is first cut down to what fits), or when a batch fails. "
        f"VSMs are added {_int(res, 'grain_n') or 0:,} at a time once `list` is over "
        f"{_v(m(f'{PREFIX}.fine_from_ms'))} ms p50. CPU in % of one core; *other work*: the "
        "whole machine's busy time in the idle window less that of the daemon, fork server, "
        "broker, VSMs, bench and kdamond; *kdamond*: the kernel's DAMON memory monitor, which "
        "this machine runs for itself (— where it runs none).",
        "",
        *table(CPU_HEAD, _cpu_rows(res)),
        *table(MEM_HEAD, _mem_rows(res)),
    ]
    k = f"{PREFIX}.{best}"
    lines = [
        _line(
            f"**{best:,}** idle VSMs with `list` at {{}} ms p50 (p99 {{}}); growth stopped "
            f"because {why}{_between(res, best, kind)}.",
            m(f"{k}.list_ms"),
            res.p99(f"{k}.list_ms"),
        )
    ]
    last = ns[-1]
    if best > ns[0]:
        lines += _list_lines(res, ns[0], best, last)
    if last > ns[0]:
        lines += _memory_lines(res, ns[0], last)
        lines += _cpu_lines(res, ns[0], last, cores)
    lines.append(_sampler_line(res))
    lines.append(
        _line(
            "Terminating all {} VSMs, a batch at a time, took {} s; the whole step {} s.",
            _n_of(res, "down_s"),
            m(f"{PREFIX}.down_s"),
            m(f"{PREFIX}.step_s"),
        )
    )
    return [*out, *[ln for ln in lines if ln], ""]


def _sampled(res: Results) -> str:
    """How many VSMs' smaps were read at the largest N."""
    ns = scale_ns(res)
    fig = res.figures.get(f"{PREFIX}.{ns[-1]}.vsm_uss_mib") if ns else None
    if fig is None or fig.n is None:
        return "the VSMs"
    if len(fig.samples) < fig.n:
        return f"a random sample of {len(fig.samples):,} VSMs (every VSM while fewer were up)"
    return "every VSM"


def scale_goals(res: Results) -> list[Goal]:
    """The default run's, then the one with memory_merge when it ran."""
    goals = [scale_goal(res)]
    merged = _view(res, MERGED)
    if _int(merged, "max_n") is not None:
        goals.append(scale_goal(merged, ", memory_merge on"))
    return goals


def scale_goal(res: Results, variant: str = "") -> Goal:
    """The largest N with `list` within the goal, and what it cost at that N."""
    name = f"idle VSMs with `list` ≤ {num(GOAL_LIST_MS)} ms p50 (private node{variant})"
    target = f"≥ {GOAL_N:,}"
    best = _int(res, "max_n")
    if best is None:
        return Goal(name, target, "—", NOT_MEASURED)
    m, k = res.median, f"{PREFIX}.{best}"
    kind, why = stop_reason(res)
    text = (
        f"{best:,} (`list` {_v(m(f'{k}.list_ms'))} ms p50; memory in use "
        f"{_v(m(f'{k}.mem_used_gib'))} GiB, broker RSS {_v(m(f'{k}.broker_mib'))} MiB, "
        f"daemon idle CPU with its sampler {_v(m(f'{k}.daemon_idle_pct'))}%); stopped: {why}"
    )
    if best >= GOAL_N:
        return Goal(name, target, text, MET)
    if kind == "top":
        return Goal(name, target, text, f"{NOT_MEASURED} beyond {best:,}")
    return Goal(name, target, text, MISSED)
