"""The project's performance goals, checked against one run's medians."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.stats import Results

MET, MISSED, NOT_MEASURED = "met", "MISSED", "not measured"


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measured: str
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def num(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _check(
    name: str, target: str, value: float | None, ok: bool, text: str, at: int | None = None
) -> Goal:
    """``at``: the figure was taken at another N than the goal's; the verdict only indicates."""
    if value is None:
        return Goal(name, target, "—", NOT_MEASURED)
    verdict = MET if ok else MISSED
    return Goal(name, target, text, verdict if at is None else f"{verdict} at N={at} (indicative)")


def sizes(res: Results, prefix: str, suffix: str) -> list[int]:
    """N values present for keys ``{prefix}.{N}{suffix}``."""
    out = []
    for key in res.figures:
        if key.startswith(prefix) and key.endswith(suffix):
            mid = key[len(prefix) : len(key) - len(suffix)]
            if mid.isdigit():
                out.append(int(mid))
    return sorted(out)


def _burst_pair(res: Results, n: int, label: str, at: int | None = None) -> list[Goal]:
    v = res.median(f"vsmd.burst.{n}.up_s")
    f = res.median(f"floor.{n}.up_s")
    s = res.median(f"supervisord.{n}.up_s")
    r = v / f if v is not None and f else None
    x = s / v if v and s is not None else None
    return [
        _check(
            f"{label}: vsmd / floor",
            "≤ 1.3x",
            r,
            r is not None and r <= 1.3,
            f"{num(r or 0)}x ({num(v or 0)} s vs {num(f or 0)} s)",
            at,
        ),
        _check(
            f"{label}: supervisord / vsmd",
            "≥ 10x",
            x,
            x is not None and x >= 10,
            f"{num(x or 0)}x ({num(s or 0)} s vs {num(v or 0)} s)",
            at,
        ),
    ]


def _burst_goals(res: Results) -> list[Goal]:
    goals: list[Goal] = []
    have = sizes(res, "vsmd.burst.", ".up_s")
    for want in (300, 1000):
        if want in have or not have:
            goals += _burst_pair(res, want, f"burst of {want}")
        else:
            goals += _burst_pair(res, have[-1], f"burst of {want} (not run)", have[-1])
    return goals


def _state_goal(
    res: Results, group: str, metric: str, want: int, name: str, limit: float, unit: str
) -> Goal:
    """A figure measured with N VSMs up (``vsmd.{group}.{N}.{metric}``), at N=want if run."""
    have = sizes(res, f"vsmd.{group}.", f".{metric}")
    n = want if want in have or not have else have[-1]
    key = f"vsmd.{group}.{n}.{metric}"
    v = res.median(key)
    return _check(
        name,
        f"≤ {num(limit)} {unit}",
        v,
        v is not None and v <= limit,
        f"{num(v or 0)} {unit} (p99 {num(res.p99(key) or 0)})",
        None if n == want else n,
    )


def _sampler_goal(res: Results, sampler: dict[str, Any]) -> Goal:
    have = sizes(res, "vsmd.idle.", ".daemon_pct")
    if not have:
        return Goal("sampler CPU", "≤ 10% of a core", "—", NOT_MEASURED)
    n = have[-1]
    on = res.median(f"vsmd.idle.{n}.daemon_pct")
    off = res.median(f"nosampler.idle.{n}.daemon_pct")
    if not sampler.get("configurable"):
        return Goal(
            "sampler CPU",
            "≤ 10% of a core",
            f"no sampler built yet; daemon idle CPU with {n} VSMs: {num(on or 0)}%",
            NOT_MEASURED,
        )
    # The sampler's share: the daemon's idle CPU with it minus the same daemon with it off.
    share = on - off if on is not None and off is not None else on
    text = f"daemon idle CPU with {n} VSMs, sampler every {sampler.get('interval')} s: "
    text += f"{num(on or 0)}%"
    if off is not None:
        text += f"; sampler off: {num(off)}%; sampler ≈ {num(share or 0)}%"
    if not sampler.get("wired"):
        text += "; the daemon does not appear to run the sampler yet"
    ok = share is not None and share <= 10
    return _check("sampler CPU", "≤ 10% of a core", share, ok, text, None if n == 1000 else n)


def at_size(res: Results, prefix: str, suffix: str, want: int) -> tuple[int | None, int | None]:
    """(N to report, None if it is the wanted N else that N) for keys prefix.N.suffix."""
    have = sizes(res, prefix, suffix)
    if not have:
        return None, None
    n = want if want in have else have[-1]
    return n, None if n == want else n


def _ms(v: float | None) -> str:
    return f"{num(v)} ms" if v is not None else "—"


def nerve_goals(res: Results) -> list[Goal]:
    m, p99 = res.median, res.p99
    lat, rr = m("ns.state.latency_ms"), m("ns.rr_ms")
    goals = [
        _check(
            "state update child → parent's replica p50",
            "≤ 2 ms",
            lat,
            lat is not None and lat <= 2,
            f"{_ms(lat)} (p99 {num(p99('ns.state.latency_ms') or 0)}); "
            f"bare client {_ms(m('nsfloor.latency_ms'))}",
        )
    ]
    n, at = at_size(res, "ns.state.rate.", ".deltas_per_s", 100)
    rate = m(f"ns.state.rate.{n}.writes_per_s")
    goals.append(
        _check(
            "state updates of 100 children in the parent's replica (each to a key of its own)",
            "≥ 20,000 /s",
            rate,
            rate is not None and rate >= 20_000,
            f"{num(rate or 0)} updates/s in {num(m(f'ns.state.rate.{n}.deltas_per_s') or 0)} "
            f"deltas/s; bare client {num(m(f'nsfloor.rate.{n}.per_s') or 0)} messages/s",
            at,
        )
    )
    n, at = at_size(res, "ns.bcast.", ".all_ms", 1000)
    every = m(f"ns.bcast.{n}.all_ms")
    goals += [
        _check(
            "broadcast to a 1,000-VSM subtree, until all have it",
            "≤ 100 ms",
            every,
            every is not None and every <= 100,
            f"{_ms(every)} (worst round {num(p99(f'ns.bcast.{n}.all_ms') or 0)}); "
            f"bare client {_ms(m(f'nsfloor.bcast.{n}.all_ms'))}",
            at,
        ),
        _check(
            "request/reply parent → child p50",
            "≤ 0.6 ms",
            rr,
            rr is not None and rr <= 0.6,
            f"{_ms(rr)}; bare client {_ms(m('nsfloor.rr_ms'))}",
        ),
    ]
    return goals


MCP_CALL_MS = 1.0  # tools/call parent -> child, p50
MCP_RATE = 2000.0  # calls/s of 10 sessions against one VSM
MCP_CLIENTS = 10


def cpu_per_call(res: Results, key: str) -> float | None:
    """CPU ms per call of the calling VSM, the called VSM and the broker together."""
    parts = [res.median(f"{key}.cpu_{who}_ms") for who in ("client", "server", "broker")]
    return sum(p for p in parts if p is not None) if None not in parts else None


def mcp_goals(res: Results) -> list[Goal]:
    m, p99 = res.median, res.p99
    call = m("mcp.call.noop_ms")
    n, at = at_size(res, "mcp.rate.", ".calls_per_s", MCP_CLIENTS)
    rate = m(f"mcp.rate.{n}.calls_per_s")
    cpu = cpu_per_call(res, f"mcp.rate.{n}")
    return [
        _check(
            "MCP tools/call parent → child p50",
            f"≤ {num(MCP_CALL_MS)} ms",
            call,
            call is not None and call <= MCP_CALL_MS,
            f"{_ms(call)} (p99 {num(p99('mcp.call.noop_ms') or 0)}); ctx.request "
            f"{_ms(m('mcp.rr_ms'))}; bare client with a VSM's channels "
            f"{_ms(m('mcpfloor.rr_vsmd_ms'))}",
        ),
        _check(
            f"MCP calls/s, {MCP_CLIENTS} sessions against one VSM",
            f"≥ {MCP_RATE:,.0f} /s",
            rate,
            rate is not None and rate >= MCP_RATE,
            f"{num(rate or 0)} calls/s; CPU per call (both VSMs and the broker) {_ms(cpu)}",
            at,
        ),
    ]


MCP_USS_MIB = 6.0  # idle VSM with its MCP server ready
FLOOR_USS_MIB = 4.5  # idle VSM, the spawn-floor goal


def merge_goals(res: Results) -> list[Goal]:
    """Idle USS of VSMs with the MCP server, with memory_merge on (bench/merge_step.py)."""
    have = sizes(res, "merge.", ".idle.merged_uss_mib")
    k = f"merge.{have[-1]}" if have else "merge.none"
    uss, served = res.median(f"{k}.idle.merged_uss_mib"), res.median(f"{k}.served.merged_uss_mib")
    plain = res.median(f"{k}.idle.plain_uss_mib")
    text = (
        f"{num(uss or 0)} MiB (N={have[-1] if have else 0}; after one MCP session "
        f"{num(served or 0)}; memory_merge off {num(plain or 0)})"
    )
    return [
        _check(name, f"≤ {num(target)} MiB", uss, uss is not None and uss <= target, text)
        for name, target in (
            ("idle VSM USS with its MCP server ready, memory_merge on", MCP_USS_MIB),
            ("idle VSM USS, memory_merge on (spawn-floor goal)", FLOOR_USS_MIB),
        )
    ]


def _floor_one(res: Results) -> str:
    """What one floor child took in the same run: the broker work alone, no daemon."""
    up, setup = res.median("floor.1.up_s"), res.median("floor.1.setup_ms")
    if up is None or setup is None:
        return ""
    return (
        f"; the floor, one forked child with the same broker work: {num(up * 1000)} ms, "
        f"{num(setup)} ms of it that work"
    )


def evaluate(res: Results, sampler: dict[str, Any]) -> list[Goal]:
    # Here, not at the top: bench.before_report builds on Goal and num of this module.
    from bench.before_report import before_goals
    from bench.scale_report import scale_goals

    p50 = res.median("vsmd.spawn_ready_ms")
    p99 = res.p99("vsmd.spawn_ready_ms")
    goals = [
        _check(
            "spawn → ready p50 (one VSM, VsmClient)",
            "≤ 15 ms",
            p50,
            p50 is not None and p50 <= 15,
            f"{num(p50 or 0)} ms{_floor_one(res)}",
        ),
        _check(
            "spawn → ready p99",
            "≤ 50 ms",
            p99,
            p99 is not None and p99 <= 50,
            f"{num(p99 or 0)} ms",
        ),
        *_burst_goals(res),
        _state_goal(res, "list", "client_ms", 1000, "`list` of 1,000 round trip", 50, "ms"),
        _state_goal(res, "cli_list", "ms", 1, "`vsmctl list --json`, 1 VSM", 250, "ms"),
        _state_goal(res, "cli_list", "ms", 1000, "`vsmctl list --json`, 1,000 VSMs", 250, "ms"),
        _state_goal(res, "mem", "vsm_uss_mib", 1000, "idle VSM USS at 1,000", 6, "MiB"),
        _sampler_goal(res, sampler),
        *before_goals(res),
        *nerve_goals(res),
        *mcp_goals(res),
        *merge_goals(res),
        *scale_goals(res),
        *trust_goals(res),
    ]
    return goals


def trust_goals(res: Results) -> list[Goal]:
    """Secure mode against cooperative, measured in turns on nodes of their own."""
    m = res.median
    on, off = m("truston.spawn_ready_ms"), m("trustoff.spawn_ready_ms")
    added = on - off if on is not None and off is not None else None
    sizes_on = sizes(res, "truston.burst.", ".up_s")
    n = sizes_on[-1] if sizes_on else 0
    b_on, b_off = m(f"truston.burst.{n}.up_s"), m(f"trustoff.burst.{n}.up_s")
    ratio = b_on / b_off if b_on is not None and b_off else None
    return [
        _check(
            "spawn → ready p50 added by secure mode",
            "≤ 2 ms",
            added,
            added is not None and added <= 2,
            f"{num(added or 0)} ms ({_ms(on)} secure, {_ms(off)} cooperative)",
        ),
        _check(
            f"burst of {n}: secure / cooperative",
            "≤ 1.25x",
            ratio,
            ratio is not None and ratio <= 1.25,
            f"{num(ratio or 0)}x ({num(b_on or 0)} s against {num(b_off or 0)} s)",
        ),
    ]
