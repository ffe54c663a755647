"""MCP between VSMs: tools/call round trips parent -> child and calls/s of several sessions at
once, measured inside VSMs by the agents of bench/mcp_agents.py, next to the bare client
(vsmd/amqp/, no runtime) doing request/reply with messages of the same sizes
(bench/nerve_floor.py); and the memory of idle VSMs without the MCP server, with it, and once
each has served one MCP session."""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from typing import Any

import mcp_types as types

from bench import suite
from bench import vsmd_figs as figs
from bench.bus import AdminPipe, BenchError
from bench.mcp_agents import NOOP
from bench.nerves import call_bytes, floor_rr, spawn_vsms
from bench.resources import memory
from bench.stats import log
from bench.vsmd_proc import VsmdProc
from vsmctl.client import VsmClient
from vsmd.errors import Unreachable
from vsmd.mcp.client import open_session
from vsmd.mcp.link import StandaloneLink
from vsmd.mcp.wire import Listener

PREFIX = "mcp"  # vsmd's figures here; the floor's are "mcpfloor."
AGENTS = ["bench.agents"]
SENDER = "vsmctl"  # how the bench's own sessions name themselves (an operator's tool)
CALLED = (
    (NOOP, "a tool that does nothing (`noop`, added with ctx.mcp.tool)"),
    ("status", "the built-in `status` tool"),
)


def _failed(result: Any) -> bool:
    return not isinstance(result, types.CallToolResult) or result.is_error is True


def run_mcp(ctx: suite.Ctx) -> None:
    with suite.daemon(ctx, "mcpon", agent_modules=AGENTS) as (d, pipe):
        suite.guarded(ctx, "mcp: memory", functools.partial(_memory, ctx, d, pipe))
        sizes: dict[str, int] = {}
        suite.guarded(ctx, "mcp: calls", functools.partial(_calls, ctx, d, pipe, sizes))
    suite.guarded(ctx, "mcp: floor", functools.partial(_floor, ctx, sizes))


# --- tools/call parent -> child ---------------------------------------------------------------


def _calls(ctx: suite.Ctx, d: VsmdProc, pipe: AdminPipe, sizes: dict[str, int]) -> None:
    plan, res, n = ctx.plan, ctx.res, ctx.plan.mcp_calls
    [parent] = spawn_vsms(pipe, 1, None, "mcpparent")
    try:
        [child] = spawn_vsms(pipe, 1, parent["id"], "mcpchild")
        sizes.update(asyncio.run(_wire_sizes(d, child["id"])))
        res.add(
            f"{PREFIX}.call.request_bytes",
            "a tools/call of noop on the wire",
            "bytes",
            [sizes["request"]],
        )
        res.add(f"{PREFIX}.call.reply_bytes", "its answer on the wire", "bytes", [sizes["reply"]])
        base = {"child": child["id"], "broker": ctx.broker_pid}
        with d.client(plan.mcp_seconds + 180.0) as c:
            for tool, what in CALLED:
                out = c.call(parent["id"], "calls", {**base, "tool": tool, "n": n}, 120.0)
                key = f"{PREFIX}.call.{tool}"
                res.add(f"{key}_ms", f"tools/call parent → child: {what}", "ms", out["ms"], 1)
                _cpu(ctx, key, out["cpu"], n, 1)
            out = c.call(parent["id"], "rr", {**base, "n": n}, 120.0)
            label = "request/reply parent → child (ctx.request), the same pair"
            size = [call_bytes(parent, "echo")]
            res.add(f"{PREFIX}.rr.request_bytes", "a ctx.request's envelope", "bytes", size)
            res.add(f"{PREFIX}.rr_ms", label, "ms", out["ms"], 1)
            _cpu(ctx, f"{PREFIX}.rr", out["cpu"], n, 1)
            for _ in range(plan.mcp_rate_repeats):
                _rate(ctx, c, parent["id"], base)
    finally:
        figs.terminate(pipe, [parent["id"]], 60.0)


def _rate(ctx: suite.Ctx, c: VsmClient, parent: str, base: dict[str, Any]) -> None:
    res, k, seconds = ctx.res, ctx.plan.mcp_clients, ctx.plan.mcp_seconds
    out = c.call(parent, "rate", {**base, "clients": k, "seconds": seconds}, seconds + 120.0)
    calls, took = int(out["calls"]), float(out["seconds"])
    if calls == 0 or min(out["per"]) == 0:
        raise BenchError(f"mcp rate: calls per session {out['per']}")
    log(f"mcp rate: {calls} calls of {k} sessions in {took:.2f} s ({calls / took:.0f}/s)")
    key = f"{PREFIX}.rate.{k}"
    label = "tools/call of N sessions at once against one VSM"
    res.add(f"{key}.calls_per_s", label, "calls/s", [calls / took], k)
    res.add(f"{key}.ms", "each call's round trip under that load", "ms", out["ms"], k)
    res.add(f"{key}.s", "from the go until the last call came back", "s", [took], k)
    _cpu(ctx, key, out["cpu"], calls, k)


def _cpu(ctx: suite.Ctx, key: str, cpu: dict[str, float], calls: int, n: int) -> None:
    names = {"client": "the calling VSM", "server": "the called VSM", "broker": "the broker"}
    for who, secs in cpu.items():
        label = f"CPU per call: {names.get(who, who)}"
        ctx.res.add(f"{key}.cpu_{who}_ms", label, "CPU ms", [secs / calls * 1e3], n)


class _Recording:
    """A listener that notes the size of every answer before passing it on."""

    def __init__(self, inner: Listener, sizes: list[int]) -> None:
        self.inner, self.sizes = inner, sizes

    async def on_message(self, body: bytes) -> None:
        self.sizes.append(len(body))
        await self.inner.on_message(body)

    async def on_lost(self) -> None:
        await self.inner.on_lost()

    async def on_returned(self, error: Unreachable) -> None:
        await self.inner.on_returned(error)


class _SizeLink(StandaloneLink):
    """A stand-alone link that notes the size of every message it sends and receives."""

    sent: list[int]
    got: list[int]

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        self.sent.append(len(body))
        await super().send(
            key, body, reply_to=reply_to, correlation_id=correlation_id, mandatory=mandatory
        )

    async def listen(self, correlation_id: str, listener: Listener) -> None:
        await super().listen(correlation_id, _Recording(listener, self.got))


async def _wire_sizes(d: VsmdProc, target: str) -> dict[str, int]:
    """Bytes on the wire of one tools/call of ``noop`` and of its answer (the bench's own
    session: the sender's id and path differ from a VSM's by a few bytes)."""
    link = _SizeLink(d.broker_url, d.namespace)
    link.sent, link.got = [], []
    try:
        async with open_session(link, link.topo, target, SENDER) as session:
            await session.call_tool(NOOP, {})  # the SDK lists the tools first
            link.sent.clear()
            link.got.clear()
            result = await session.call_tool(NOOP, {})
            if _failed(result) or len(link.sent) != 1 or len(link.got) != 1:
                raise BenchError(f"one noop call: sent {link.sent}, got {link.got}, {result}")
            return {"request": link.sent[0], "reply": link.got[0]}
    finally:
        await link.close()


def _floor(ctx: suite.Ctx, sizes: dict[str, int]) -> None:
    """Bare-client request/reply with an MCP call's sizes: the floor of the round trip."""
    plan, res = ctx.plan, ctx.res
    log("mcp floor: bare-client request/reply")
    req, rep = sizes.get("request", 400), sizes.get("reply", 400)
    what = "request/reply, direct reply-to, a tools/call's sizes"
    for like_vsmd, key, label in (
        (False, "rr_ms", what),
        (True, "rr_vsmd_ms", f"{what}, with a VSM's channels (mandatory, acked)"),
    ):
        ms = floor_rr(ctx.url, plan.mcp_calls, req, like_vsmd, rep)
        res.add(f"{PREFIX}floor.{key}", label, "ms", ms, 1)


# --- memory -----------------------------------------------------------------------------------


def _memory(ctx: suite.Ctx, on: VsmdProc, on_pipe: AdminPipe) -> None:
    """Idle VSMs of two daemons up side by side, one with ``mcp_server = false``: USS of
    each, then again once every VSM of the daemon with MCP has served one session. The VSMs
    without MCP are measured again at that moment too: what time alone did to them."""
    n, res = ctx.plan.mcp_vsms, ctx.res
    timeout = 60.0 + 0.5 * n
    with suite.daemon(ctx, "mcpoff", agent_modules=AGENTS, mcp_server=False) as (off, off_pipe):
        _up, off_ids = figs.burst_up(off_pipe, n, timeout)
        try:
            _up, on_ids = figs.burst_up(on_pipe, n, timeout)
            try:
                daemons = {"off": off, "on": on}
                first = _settled_uss(ctx, daemons, n)
                log(f"mcp: one session with each of {n} VSMs")
                took = asyncio.run(one_session_each(on, on_ids))
                res.add(
                    f"{PREFIX}.mem.{n}.sessions_s", "open, status, close with each", "s", [took], n
                )
                later = _settled_uss(ctx, daemons, n)
            finally:
                figs.terminate(on_pipe, on_ids, timeout)
        finally:
            figs.terminate(off_pipe, off_ids, timeout)
    for key, label, samples in (
        ("off_uss_mib", "idle VSM USS, mcp_server = false", first["off"]),
        ("on_uss_mib", "idle VSM USS, MCP server (default), no session yet", first["on"]),
        ("served_uss_mib", "idle VSM USS after serving one MCP session", later["on"]),
        ("off_later_uss_mib", "idle VSM USS, mcp_server = false, measured then too", later["off"]),
    ):
        res.add(f"{PREFIX}.mem.{n}.{key}", label, "MiB", samples, n)


def _settled_uss(
    ctx: suite.Ctx, daemons: dict[str, VsmdProc], n: int, timeout: float = 15.0
) -> dict[str, list[float]]:
    """USS (MiB) of every VSM of each daemon, once two readings 0.2 s apart agree."""
    deadline = time.monotonic() + timeout
    last: dict[str, list[float]] | None = None
    while True:
        now = {tag: memory(d, None)["vsm_uss"] for tag, d in daemons.items()}
        if last is not None and all(
            len(now[t]) == n == len(last[t])
            and abs(statistics.median(now[t]) - statistics.median(last[t])) < 0.01
            for t in now
        ):
            return now
        if time.monotonic() > deadline:
            seen = {t: len(v) for t, v in now.items()}
            ctx.res.note(f"mcp memory: not settled after {timeout:g} s ({seen} VSMs of {n})")
            return now
        last = now
        time.sleep(0.2)


async def one_session_each(d: VsmdProc, ids: list[str]) -> float:
    """One MCP session with each VSM in turn: initialize, call status, close. Seconds taken."""
    link = StandaloneLink(d.broker_url, d.namespace)
    start = time.perf_counter()
    try:
        for vsm_id in ids:
            async with open_session(link, link.topo, vsm_id, SENDER) as session:
                result = await session.call_tool("status", {})
                if _failed(result):
                    raise BenchError(f"status of {vsm_id} failed: {result}")
    finally:
        await link.close()
    return time.perf_counter() - start
