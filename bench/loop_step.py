"""The VSM's event loop: two daemons up side by side, one with ``event_loop = "uvloop"`` (the
default), one with ``"asyncio"``; the same parent -> child MCP tools/call and ctx.request from
the agents of bench/mcp_agents.py, and spawn -> ready, on each in turns."""

from __future__ import annotations

import time
from typing import Any

from bench import suite
from bench.bus import AdminPipe
from bench.goals import num
from bench.mcp_agents import NOOP
from bench.mcp_step import AGENTS
from bench.nerves import spawn_vsms
from bench.stats import Results
from bench.tables import table
from bench.vsmd_figs import terminate
from bench.vsmd_proc import VsmdProc
from vsmd.protocol import SpawnConfig

PREFIX = "loop"
LOOPS = ("uvloop", "asyncio")
ROUNDS = 4  # turns: each daemon measures a quarter of the calls, then the other


def run_loops(ctx: suite.Ctx) -> None:
    with (
        suite.daemon(ctx, "uvloop", agent_modules=AGENTS, event_loop="uvloop") as uv,
        suite.daemon(ctx, "asyncioloop", agent_modules=AGENTS, event_loop="asyncio") as aio,
    ):
        pairs = {"uvloop": _pair(*uv), "asyncio": _pair(*aio)}
        daemons = {"uvloop": uv[0], "asyncio": aio[0]}
        try:
            calls = max(ctx.plan.mcp_calls // ROUNDS, 20)
            spawns = max(ctx.plan.latency_reps // ROUNDS, 5)
            for _ in range(ROUNDS):
                for kind in LOOPS:
                    _measure(ctx, kind, daemons[kind], pairs[kind], calls, spawns)
        finally:
            for kind, (_d, pipe) in (("uvloop", uv), ("asyncio", aio)):
                terminate(pipe, [pairs[kind]["parent"]], 60.0)


def _pair(_d: VsmdProc, pipe: AdminPipe) -> dict[str, Any]:
    [parent] = spawn_vsms(pipe, 1, None, "mcpparent")
    [child] = spawn_vsms(pipe, 1, parent["id"], "mcpchild")
    return {"parent": parent["id"], "child": child["id"]}


def _measure(
    ctx: suite.Ctx, kind: str, d: VsmdProc, pair: dict[str, Any], calls: int, spawns: int
) -> None:
    res, key = ctx.res, f"{PREFIX}.{kind}"
    base = {"child": pair["child"], "broker": ctx.broker_pid}
    with d.client(180.0) as c:
        out = c.call(pair["parent"], "calls", {**base, "tool": NOOP, "n": calls}, 120.0)
        res.add(f"{key}.call_ms", f"tools/call of noop parent → child, {kind}", "ms", out["ms"], 1)
        out = c.call(pair["parent"], "rr", {**base, "n": calls}, 120.0)
        res.add(f"{key}.rr_ms", f"ctx.request parent → child, {kind}", "ms", out["ms"], 1)
        took = []
        for _ in range(spawns):
            start = time.perf_counter()
            info = c.spawn_recursive_vsm(None, SpawnConfig())
            took.append((time.perf_counter() - start) * 1000)
            c.terminate_child_vsm(info.id)
        res.add(f"{key}.spawn_ms", f"spawn → ready, {kind}", "ms", took, 1)


def loop_section(res: Results) -> list[str]:
    """The report's lines: a table of both loops' medians and their ratio."""
    rows = []
    for what, name in (
        ("MCP tools/call parent → child (noop)", "call_ms"),
        ("ctx.request parent → child", "rr_ms"),
        ("spawn → ready (VsmClient)", "spawn_ms"),
    ):
        uv, aio = res.median(f"{PREFIX}.uvloop.{name}"), res.median(f"{PREFIX}.asyncio.{name}")
        if uv is None or aio is None:
            continue
        rows.append([what, num(uv), num(aio), f"{num(uv / aio)}x"])
    if not rows:
        return []
    return [
        "## The VSM's event loop: uvloop and asyncio",
        "",
        'Two daemons up side by side, `event_loop = "uvloop"` (the default) and '
        f'`"asyncio"`, measured in {ROUNDS} turns each (medians, ms):',
        "",
        *table(["Figure", "uvloop", "asyncio", "uvloop / asyncio"], rows),
    ]
