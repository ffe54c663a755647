"""The report's MCP section: every number comes from the run's figures (keys ``mcp.`` and
``mcpfloor.``, taken by bench/mcp_step.py)."""

from __future__ import annotations

from bench.goals import MCP_CALL_MS, MCP_CLIENTS, MCP_RATE, at_size, cpu_per_call, num, sizes
from bench.stats import Results
from bench.tables import bullet as _line
from bench.tables import dash as _v
from bench.tables import table

WHO = ("client", "server", "broker")


def _sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _abs(a: float | None) -> float | None:
    return abs(a) if a is not None else None


def _more_or_less(diff: float | None) -> str:
    return "less" if diff is not None and diff < 0 else "more"


def _rate_n(res: Results) -> int | None:
    n, _at = at_size(res, "mcp.rate.", ".calls_per_s", MCP_CLIENTS)
    return n


def _mem_n(res: Results) -> int | None:
    have = sizes(res, "mcp.mem.", ".on_uss_mib")
    return have[-1] if have else None


def _latency_rows(res: Results) -> list[list[str]]:
    def row(what: str, n: int | None, key: str, floor: str | None) -> list[str]:
        v, f = res.median(key), res.median(floor) if floor else None
        unit = res.figures[key].unit if key in res.figures else ""
        return [
            what,
            f"{n:,}" if n else "",
            _v(v),
            _v(res.p99(key)),
            _v(f),
            f"{num(v / f)}x" if v is not None and f else "—",
            unit,
        ]

    rows = [
        row("tools/call parent → child, `noop`", 1, "mcp.call.noop_ms", "mcpfloor.rr_ms"),
        row("the same; floor with a VSM's channels", 1, "mcp.call.noop_ms", "mcpfloor.rr_vsmd_ms"),
        row("tools/call, the built-in `status`", 1, "mcp.call.status_ms", "mcpfloor.rr_vsmd_ms"),
        row("`ctx.request`, the same pair", 1, "mcp.rr_ms", None),
    ]
    n = _rate_n(res)
    if n is not None:
        rows.append(
            row("calls/s of N sessions against one VSM", n, f"mcp.rate.{n}.calls_per_s", None)
        )
        rows.append(row("each call's round trip under that load", n, f"mcp.rate.{n}.ms", None))
    return [r for r in rows if r[2] != "—"]


def _cpu_rows(res: Results) -> list[list[str]]:
    n = _rate_n(res)
    keys = [
        ("`ctx.request`, one at a time", "mcp.rr"),
        ("tools/call `noop`, one at a time", "mcp.call.noop"),
        ("tools/call `status`, one at a time", "mcp.call.status"),
        (f"tools/call `noop`, {n} sessions at once", f"mcp.rate.{n}"),
    ]
    rows = []
    for what, key in keys:
        parts = [res.median(f"{key}.cpu_{who}_ms") for who in WHO]
        if all(p is None for p in parts):
            continue
        rows.append([what, *(_v(p) for p in parts), _v(cpu_per_call(res, key))])
    return rows


def _mem_rows(res: Results) -> list[list[str]]:
    n = _mem_n(res)
    if n is None:
        return []
    k = f"mcp.mem.{n}"
    rows = []
    for what, key, base in (
        ("`mcp_server = false`", "off_uss_mib", None),
        ("MCP server (the default), no session yet", "on_uss_mib", "off_uss_mib"),
        ("`mcp_server = false`, measured again later", "off_later_uss_mib", None),
        ("MCP server, after serving one session each", "served_uss_mib", "off_later_uss_mib"),
    ):
        v = res.median(f"{k}.{key}")
        if v is None:
            continue
        extra = _sub(v, res.median(f"{k}.{base}")) if base else None
        rows.append(
            [what, _v(v), _v(res.p99(f"{k}.{key}")), f"{extra:+.2f}" if extra is not None else ""]
        )
    return rows


def _call_prose(res: Results) -> list[str | None]:
    m = res.median
    noop, rr, bare = m("mcp.call.noop_ms"), m("mcp.rr_ms"), m("mcpfloor.rr_vsmd_ms")
    cpu = [m(f"mcp.call.noop.cpu_{w}_ms") for w in WHO]
    rr_cpu = [m(f"mcp.rr.cpu_{w}_ms") for w in WHO]
    return [
        _line(
            "A tools/call of `noop` (a tool that does nothing, added with `ctx.mcp.tool`) from "
            "a parent VSM to its child over `ctx.mcp_client` took {} ms (p50; p99 {} ms); the "
            "built-in `status` took {} ms. The same pair's `ctx.request` took {} ms ({} bytes "
            "out). Bare-client request/reply with a tools/call's sizes ({} bytes out, {} bytes "
            "back) took {} ms, and {} ms with a VSM's channels (mandatory requests, each acked "
            "once answered). A tools/call took {} ms more than the same pair's "
            "`ctx.request`, which took {} ms "
            + _more_or_less(_sub(rr, bare))
            + " than that bare pair.",
            noop,
            res.p99("mcp.call.noop_ms"),
            m("mcp.call.status_ms"),
            rr,
            m("mcp.rr.request_bytes"),
            m("mcp.call.request_bytes"),
            m("mcp.call.reply_bytes"),
            m("mcpfloor.rr_ms"),
            bare,
            _sub(noop, rr),
            _abs(_sub(rr, bare)),
        ),
        _line(
            "CPU per call, one at a time: for a `noop` tools/call the calling VSM used {} ms, "
            "the called VSM {} ms and the broker {} ms; for a `ctx.request` {} ms, {} ms and "
            "{} ms. A tools/call so costs {} CPU ms more than a `ctx.request` in the calling "
            "VSM and {} ms more in the called one.",
            *cpu,
            *rr_cpu,
            _sub(cpu[0], rr_cpu[0]),
            _sub(cpu[1], rr_cpu[1]),
        ),
    ]


def _rate_prose(res: Results, cores: int) -> list[str | None]:
    m, n = res.median, _rate_n(res)
    if n is None:
        return []
    k = f"mcp.rate.{n}"
    rate, per_call = m(f"{k}.calls_per_s"), cpu_per_call(res, k)
    used = per_call * rate / 1e3 if per_call is not None and rate is not None else None
    bound = cores * 1e3 / per_call if per_call else None
    runs = len(res.figures[f"{k}.calls_per_s"].samples) if rate is not None else 0
    return [
        _line(
            "{} sessions held by one parent VSM, each calling its child's `noop` one call after "
            "another, made {} calls/s together over {} s (median of {} "
            + ("run" if runs == 1 else "runs")
            + "); a call took {} ms "
            "(p50; p99 {} ms) with {} in flight. Per call the calling VSM used {} CPU ms, the "
            "called VSM {} and the broker {}: {} together, {} of the machine's {} cores over "
            "the window. At that cost per call the {} cores carry at most {} calls/s.",
            n,
            rate,
            m(f"{k}.s"),
            runs,
            m(f"{k}.ms"),
            res.p99(f"{k}.ms"),
            n,
            *(m(f"{k}.cpu_{w}_ms") for w in WHO),
            per_call,
            used,
            cores,
            cores,
            bound,
        )
    ]


def _mem_prose(res: Results) -> list[str | None]:
    n = _mem_n(res)
    if n is None:
        return []
    m, k = res.median, f"mcp.mem.{n}"
    off, on, served, later = (m(f"{k}.{w}_uss_mib") for w in ("off", "on", "served", "off_later"))
    return [
        _line(
            "Two daemons up side by side, {} idle VSMs each: an idle VSM's USS was {} MiB with "
            "`mcp_server = false` and {} MiB with the MCP server (the default), {} MiB "
            + _more_or_less(_sub(on, off))
            + ". Once each VSM of the second daemon had served one MCP session (initialize, call "
            "`status`, close; {} s for all {}, one after the other), its USS was {} MiB, {} "
            "MiB more than before; the VSMs without MCP, measured at the same moment, were at "
            "{} MiB.",
            n,
            off,
            on,
            _abs(_sub(on, off)),
            m(f"{k}.sessions_s"),
            n,
            served,
            _sub(served, on),
            later,
        )
    ]


def _missed(res: Results, cores: int) -> list[str | None]:
    """What stands behind each missed MCP goal, in this run's numbers."""
    m = res.median
    out: list[str | None] = []
    noop, rr, bare = m("mcp.call.noop_ms"), m("mcp.rr_ms"), m("mcpfloor.rr_vsmd_ms")
    if noop is not None and noop > MCP_CALL_MS:
        if bare is not None and bare >= MCP_CALL_MS:
            out.append(
                _line(
                    "**MCP tools/call ≤ {} ms: missed by {} ms.** Bare-client request/reply "
                    "with the same sizes and a VSM's channels took {} ms itself on this "
                    "machine and broker.",
                    MCP_CALL_MS,
                    noop - MCP_CALL_MS,
                    bare,
                )
            )
        else:
            out.append(
                _line(
                    "**MCP tools/call ≤ {} ms: missed by {} ms.** Bare-client request/reply "
                    "with the same sizes and a VSM's channels took {} ms, which leaves {} ms "
                    "for what vsmd and MCP add; a tools/call took {} ms more than that pair, and "
                    "{} ms more than the same VSMs' `ctx.request`.",
                    MCP_CALL_MS,
                    noop - MCP_CALL_MS,
                    bare,
                    _sub(MCP_CALL_MS, bare),
                    _sub(noop, bare),
                    _sub(noop, rr),
                )
            )
    n = _rate_n(res)
    k = f"mcp.rate.{n}"
    rate, per_call = m(f"{k}.calls_per_s"), cpu_per_call(res, k)
    if rate is not None and rate < MCP_RATE and per_call:
        text = (
            "**MCP ≥ {} calls/s against one VSM: missed ({} calls/s).** A call cost {} CPU ms "
            "in the calling VSM, the called VSM and the broker together: on this machine's {} "
            "cores that allows at most {} calls/s"
        )
        if cores * 1e3 / per_call < MCP_RATE:
            text += "; {} calls/s here needs at most {} CPU ms per call in all three together."
            out.append(
                _line(
                    text,
                    MCP_RATE,
                    rate,
                    per_call,
                    cores,
                    cores * 1e3 / per_call,
                    MCP_RATE,
                    cores * 1e3 / MCP_RATE,
                )
            )
        else:
            out.append(_line(text + ".", MCP_RATE, rate, per_call, cores, cores * 1e3 / per_call))
    return out


def mcp_section(res: Results, cores: int) -> list[str]:
    latency, cpu, mem = _latency_rows(res), _cpu_rows(res), _mem_rows(res)
    if not (latency or cpu or mem):
        return []
    out = [
        "## MCP: tools/call between VSMs",
        "",
        "Measured inside VSMs by bench agents (`bench/mcp_agents.py`): a parent VSM calls its "
        "child's tools through `ctx.mcp_client`. Next to it, the VSM's AMQP client bare (no "
        "runtime) doing request/reply on the same broker with messages of a tools/call's sizes "
        "(`bench/nerve_floor.py`). The p99 column is the largest sample when there are fewer "
        "than 100.",
        "",
    ]
    if latency:
        head = ["MCP", "N", "vsmd median", "vsmd p99", "bare client", "vsmd/bare", "Unit"]
        out += table(head, latency)
    if cpu:
        out += ["CPU ms per call, in exactly the measured window:", ""]
        out += table(["Calls", "calling VSM", "called VSM", "broker", "all three"], cpu)
    if mem:
        out += ["Idle VSM USS (MiB), two daemons up side by side:", ""]
        out += table(["Daemon", "median", "p99", "vs `mcp_server = false` then"], mem)
    prose = [*_call_prose(res), *_rate_prose(res, cores), *_mem_prose(res), *_missed(res, cores)]
    return [*out, *[ln for ln in prose if ln], ""]
