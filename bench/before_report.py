"""The report's section and goals on the runtime before VSMs ran on one asyncio loop: every
number comes from the run's figures (keys ``before.``, taken by bench/before_step.py), old and
new side by side in the same run, judged as ratios."""

from __future__ import annotations

from bench.before_step import OLD_REV, PREFIX
from bench.goals import MET, MISSED, NOT_MEASURED, Goal, num, sizes
from bench.stats import Results
from bench.tables import table

TARGET = "≤ 1.00x of the old runtime in the same run"


def before_n(res: Results) -> int | None:
    """N of the idle batches, when both sides have it."""
    old = sizes(res, f"{PREFIX}.old.mem.", ".vsm_uss_mib")
    now = sizes(res, f"{PREFIX}.now.mem.", ".vsm_uss_mib")
    both = sorted(set(old) & set(now))
    return both[-1] if both else None


def _pair(res: Results, name: str, p99: bool = False) -> tuple[float | None, float | None]:
    """(old, now) of ``before.{side}.{name}``: medians, or p99s."""
    get = res.p99 if p99 else res.median
    return get(f"{PREFIX}.old.{name}"), get(f"{PREFIX}.now.{name}")


def _ratio(old: float | None, now: float | None) -> float | None:
    return now / old if old and now is not None else None


def _rows(res: Results) -> list[list[str]]:
    wanted: list[tuple[str, str, bool]] = [
        ("spawn → ready, one VSM, p50 (ms)", "spawn_ready_ms", False),
        ("spawn → ready, one VSM, p99 (ms)", "spawn_ready_ms", True),
    ]
    n = before_n(res)
    if n is not None:
        wanted += [
            (f"burst of {n:,}, until all ready (s)", f"burst.{n}.up_s", False),
            (f"idle VSM USS, median of {n:,} (MiB)", f"mem.{n}.vsm_uss_mib", False),
            (f"idle VSM PSS, median of {n:,} (MiB)", f"mem.{n}.vsm_pss_mib", False),
            (f"fork server RSS, {n:,} VSMs up (MiB)", f"mem.{n}.forkserver_rss_mib", False),
        ]
    rows = []
    for what, name, p99 in wanted:
        old, now = _pair(res, name, p99)
        ratio = _ratio(old, now)
        if old is not None and now is not None and ratio is not None:
            rows.append([what, num(old), num(now), f"{num(ratio)}x"])
    return rows


def before_section(res: Results) -> list[str]:
    rows = _rows(res)
    if not rows:
        return []
    spawns = res.figures.get(f"{PREFIX}.old.spawn_ready_ms")
    reps = len(spawns.samples) if spawns else 0
    return [
        "## Before the asyncio runtime: the same spawn, side by side",
        "",
        f"The code before VSMs ran on one asyncio loop (git `{OLD_REV}`, VSMs on pika in "
        "threads), taken from git and started as a second daemon on this run's broker next "
        "to today's (its defaults), both with the bench's limits. Spawn → ready: "
        f"{reps} spawns each through one open admin channel, old and new alternating. Then "
        "the idle VSMs on one side at a time, in turns; USS once the VSMs had idled "
        "a few seconds and the median held still. Below 1x, today's runtime is the cheaper.",
        "",
        *table(["Figure", "before", "today", "today / before"], rows),
    ]


def _goal(name: str, unit: str, old: float | None, now: float | None, extra: str) -> Goal:
    ratio = _ratio(old, now)
    if ratio is None or old is None or now is None:
        return Goal(name, TARGET, "—", NOT_MEASURED)
    text = f"{num(ratio)}x ({num(now)} {unit} today, {num(old)} {unit} before{extra})"
    return Goal(name, TARGET, text, MET if ratio <= 1.0 else MISSED)


def before_goals(res: Results) -> list[Goal]:
    """Today's runtime against the old one measured beside it, not against old figures."""
    n = before_n(res)
    uss = _pair(res, f"mem.{n}.vsm_uss_mib") if n is not None else (None, None)
    return [
        _goal(
            "spawn → ready p50, not worse than before the asyncio runtime",
            "ms",
            *_pair(res, "spawn_ready_ms"),
            "",
        ),
        _goal(
            "idle VSM USS, not worse than before the asyncio runtime",
            "MiB",
            *uss,
            f", {n:,} VSMs each" if n is not None else "",
        ),
    ]
