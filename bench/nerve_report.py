"""The report's nervous-system section and goals: every number comes from the run's figures."""

from __future__ import annotations

from bench.goals import num, sizes
from bench.stats import Results
from bench.tables import table


def _row(res: Results, what: str, n: int | None, key: str, floor: str | None) -> list[str]:
    v, f = res.median(key), res.median(floor) if floor else None
    unit = res.figures[key].unit if key in res.figures else ""
    ratio = f"{num(v / f)}x" if v is not None and f else "—"
    return [
        what,
        f"{n:,}" if n else "",
        num(v) if v is not None else "—",
        num(res.p99(key) or 0) if key in res.figures else "—",
        num(f) if f is not None else "—",
        ratio,
        unit,
    ]


def _rows(res: Results) -> list[list[str]]:
    rows = [
        _row(res, "state write → parent's replica", 1, "ns.state.latency_ms", "nsfloor.latency_ms"),
        _row(res, "request/reply parent → child", 1, "ns.rr_ms", "nsfloor.rr_ms"),
        _row(res, "the same; floor with a VSM's channels", 1, "ns.rr_ms", "nsfloor.rr_vsmd_ms"),
    ]
    for n in sizes(res, "ns.state.rate.", ".deltas_per_s"):
        key = f"ns.state.rate.{n}"
        floor = f"nsfloor.rate.{n}.per_s"
        rows.append(_row(res, "state deltas at the parent", n, f"{key}.deltas_per_s", floor))
        label = "updates in the parent's replica"
        rows.append(_row(res, label, n, f"{key}.writes_per_s", None))
    for n in sizes(res, "ns.bcast.", ".all_ms"):
        for what, tail in (("until all have it", "all_ms"), ("each arrival", "each_ms")):
            key, floor = f"ns.bcast.{n}.{tail}", f"nsfloor.bcast.{n}.{tail}"
            rows.append(_row(res, f"broadcast, {what}", n, key, floor))
    return [r for r in rows if r[2] != "—"]


def _fmt(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else num(v)


def _line(text: str, *values: float | None) -> str | None:
    """A bullet of the report, or None when one of its figures was not measured."""
    known = [v for v in values if v is not None]
    if len(known) != len(values):
        return None
    return "- " + text.format(*(_fmt(v) for v in known))


def _rounds_line(res: Results) -> str | None:
    lat, rr = res.figures.get("ns.pairs.latency_ratio"), res.figures.get("ns.pairs.rr_ratio")
    if lat is None or rr is None:
        return None  # a run from before the rounds
    return _line(
        "Both were taken in {} rounds, each next to the bare client's pairs (the floor first in "
        "every other round), so that the two are compared in the same minutes of a shared "
        "machine: per round, vsmd's state latency was {}x to {}x the bare publisher's and its "
        "request/reply {}x to {}x the bare pair with a VSM's channels.",
        len(rr.samples),
        min(lat.samples),
        max(lat.samples),
        min(rr.samples),
        max(rr.samples),
    )


def _prose(res: Results, cores: int) -> list[str | None]:
    m = res.median
    lines = [
        _line(
            "A write to a child's state was in its parent's replica after {} ms (p50; p99 {} "
            "ms). A bare-client publisher and consumer carried a message of the same size ({} "
            "bytes) in {} ms, so vsmd added {} ms. The parent looked at its replica on every "
            "turn of its loop while a probe was due, one turn every {} µs on average.",
            m("ns.state.latency_ms"),
            res.p99("ns.state.latency_ms"),
            m("ns.state.probe_bytes"),
            m("nsfloor.latency_ms"),
            _diff(m("ns.state.latency_ms"), m("nsfloor.latency_ms")),
            _scale(m("ns.state.turn_ms"), 1e3),
        ),
        _line(
            "Request/reply from a parent to its child took {} ms (p50; p99 {} ms) against {} ms "
            "for a bare-client pair with direct reply-to and {} ms for the same pair with a VSM's "
            "channels (mandatory requests, each acked once answered, replies on a second "
            "channel).",
            m("ns.rr_ms"),
            res.p99("ns.rr_ms"),
            m("nsfloor.rr_ms"),
            m("nsfloor.rr_vsmd_ms"),
        ),
        _rounds_line(res),
    ]
    for n in sizes(res, "ns.state.rate.", ".deltas_per_s"):
        k = f"ns.state.rate.{n}"
        cpu = [m(f"{k}.cpu_{w}_s") for w in ("vsms", "broker", "daemon")]
        busy = sum(c for c in cpu if c is not None) / (m(f"{k}.s") or 1) / cores * 100
        lines.append(
            _line(
                "With {} children writing, the parent received {} deltas/s carrying {} updates/s "
                "({} updates a delta: a delta takes every write since the one before); a bare "
                "pair moved {} messages/s of the same size. In that window the VSMs used {} CPU "
                "s, the broker {} and the daemon {} over {} s: {}% of the machine's {} cores.",
                n,
                m(f"{k}.deltas_per_s"),
                m(f"{k}.writes_per_s"),
                _ratio(m(f"{k}.writes_per_s"), m(f"{k}.deltas_per_s")),
                m(f"nsfloor.rate.{n}.per_s"),
                *cpu,
                m(f"{k}.s"),
                busy,
                cores,
            )
        )
    for n in sizes(res, "ns.bcast.", ".all_ms"):
        fig = res.figures[f"ns.bcast.{n}.all_ms"]
        lines.append(
            _line(
                "A broadcast from a root reached all {} VSMs under it in {} ms (median of {} "
                "rounds, worst {} ms); half of the arrivals came within {} ms.",
                n,
                m(f"ns.bcast.{n}.all_ms"),
                len(fig.samples),
                max(fig.samples),
                m(f"ns.bcast.{n}.each_ms"),
            )
        )
        lines.append(
            _line(
                "The same broadcast to {} receivers forked from one process, each with its own "
                "connection and inbox of the bare client (the floor), reached all of them in {} ms "
                "(median of {} rounds); vsmd took {}x that.",
                n,
                m(f"nsfloor.bcast.{n}.all_ms"),
                len(floor.samples)
                if (floor := res.figures.get(f"nsfloor.bcast.{n}.all_ms"))
                else None,
                _ratio(m(f"ns.bcast.{n}.all_ms"), m(f"nsfloor.bcast.{n}.all_ms")),
            )
        )
        lines.extend(_broadcast_cpu(res, n))
    lines.append(_floor_vs_goals(res))
    return lines


def _broadcast_cpu(res: Results, n: int) -> list[str | None]:
    """Where the CPU of the rounds went, in vsmd and in the floor, per message received."""
    m = res.median
    v, f = f"ns.bcast.{n}.", f"nsfloor.bcast.{n}."
    return [
        _line(
            "The root's ctx.broadcast returned after {} ms (median; worst {} ms): it waits for "
            "the broker's confirm, which comes once the message is in every inbox. vsmd's "
            "rounds took {} s in all, the floor's, which publishes without confirms, {} s.",
            m(f"{v}publish_ms"),
            max(fig.samples) if (fig := res.figures.get(f"{v}publish_ms")) else None,
            m(f"{v}window_s"),
            m(f"{f}window_s"),
        ),
        _line(
            "CPU per message received, over those rounds and what the processes do idle "
            "meanwhile: {} ms in the VSMs, {} ms in the broker and {} ms in the daemon; in the "
            "floor {} ms in the receivers and {} ms in the broker.",
            m(f"{v}cpu_vsms_ms"),
            m(f"{v}cpu_broker_ms"),
            m(f"{v}cpu_daemon_ms"),
            m(f"{f}cpu_receivers_ms"),
            m(f"{f}cpu_broker_ms"),
        ),
        _line(
            "Idle just before the rounds, the VSMs used {}% of one core, the broker {}% and the "
            "daemon {}%; the floor's receivers {}% and its broker {}%. Less that idle work over "
            "each side's rounds, a message received cost {} CPU ms in the VSMs, {} ms in the "
            "broker and {} ms in the daemon, against {} ms in the floor's receivers and {} ms in "
            "its broker: the VSMs {}x the receivers, the broker {}x.",
            m(f"{v}idle_vsms_pct"),
            m(f"{v}idle_broker_pct"),
            m(f"{v}idle_daemon_pct"),
            m(f"{f}idle_receivers_pct"),
            m(f"{f}idle_broker_pct"),
            m(f"{v}net_vsms_ms"),
            m(f"{v}net_broker_ms"),
            m(f"{v}net_daemon_ms"),
            m(f"{f}net_receivers_ms"),
            m(f"{f}net_broker_ms"),
            _ratio(m(f"{v}net_vsms_ms"), m(f"{f}net_receivers_ms")),
            _ratio(m(f"{v}net_broker_ms"), m(f"{f}net_broker_ms")),
        ),
        _line(
            "The machine's own memory monitor (the kernel's DAMON threads, kdamond, which the "
            "bench does not start) used {} CPU ms per message received during vsmd's rounds and "
            "{} ms during the floor's: {}% and {}% of one core, on the same two cores.",
            m(f"{v}cpu_kdamond_ms"),
            m(f"{f}cpu_kdamond_ms"),
            _busy(res, v),
            _busy(res, f),
        ),
    ]


def _busy(res: Results, key: str) -> float | None:
    """Percent of one core that kdamond used over the rounds."""
    per, window = res.median(f"{key}cpu_kdamond_ms"), res.median(f"{key}window_s")
    fig = res.figures.get(f"{key}cpu_kdamond_ms")
    if per is None or not window or fig is None or fig.n is None:
        return None
    return per * fig.n / 1e3 / window * 100


def _floor_vs_goals(res: Results) -> str | None:
    """Which goals the bare client itself misses on this machine: vsmd cannot beat its floor."""
    # The rate's floor moves messages, one per delta; the goal counts updates, which a delta
    # carries many of: the floor bounds neither way, so it is not among these.
    checks = [
        ("latency", res.median("nsfloor.latency_ms"), 2.0, "ms", False),
        ("request/reply", res.median("nsfloor.rr_ms"), 0.6, "ms", False),
        # (what, the floor's median, the goal's limit, unit, higher is better)
    ]
    fans = sizes(res, "nsfloor.bcast.", ".all_ms")
    if fans and fans[-1] >= 1000:  # the goal is for a subtree of 1,000
        broadcast = res.median(f"nsfloor.bcast.{fans[-1]}.all_ms")
        checks.append((f"broadcast to {fans[-1]:,}", broadcast, 100.0, "ms", False))
    missed = [
        f"{what} {num(v)} {unit} (goal {'≥' if higher else '≤'} {goal:,g} {unit})"
        for what, v, goal, unit, higher in checks
        if v is not None and (v < goal if higher else v > goal)
    ]
    if not missed:
        return None
    return (
        "- The bare client itself, on this machine and broker, misses these goals: "
        + "; ".join(missed)
        + ". VSMs talk through the same client: here they cannot do better than that."
    )


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _scale(a: float | None, by: float) -> float | None:
    return a * by if a is not None else None


def nervous(res: Results, cores: int) -> list[str]:
    rows = _rows(res)
    if not rows:
        return []
    head = ["Between VSMs", "N", "vsmd median", "vsmd p99", "bare client", "vsmd/bare", "Unit"]
    intro = (
        "Measured inside VSMs by bench agents (`bench/nerve_agents.py`), next to the bare client "
        "on the same broker doing the same with messages of the same size "
        "(`bench/nerve_floor.py`). The p99 column is the largest sample when there are fewer "
        "than 100."
    )
    prose = [ln for ln in _prose(res, cores) if ln]
    return ["## Nervous system: between VSMs", "", intro, "", *table(head, rows), *prose, ""]
