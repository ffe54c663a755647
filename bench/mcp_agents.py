"""Agents of the MCP benchmarks: a parent that calls its child's tools over MCP and times them.

The child adds a tool that does nothing (``noop``) with ``ctx.mcp.tool``; the parent opens
``ctx.mcp_client(child)`` and calls it, one call at a time for the round trip, or from several
sessions at once for the rate. Both also count the CPU that the parent (the client), the child
(the server) and the broker spend in exactly the measured window, from
/proc/PID/task/*/schedstat (every thread, ns precision), so a call's cost can be split.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import mcp_types as types
from mcp.client.session import ClientSession

from bench.schedstat import task_seconds
from vsmd.agents import AgentContext, AsyncAgent, Sender
from vsmd.mcp.registry import Caller

NOOP = "noop"


def cpu_seconds(pid: int | None) -> float | None:
    """On-CPU time of every thread of ``pid`` (None: no such process, or not readable)."""
    return None if pid is None else task_seconds(pid)


class CpuOf:
    """CPU seconds of named processes between construction and :meth:`stop`."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.before = {k: cpu_seconds(p) for k, p in pids.items()}

    def stop(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, pid in self.pids.items():
            after, before = cpu_seconds(pid), self.before[k]
            if after is not None and before is not None:
                out[k] = after - before
        return out


async def _call(session: ClientSession, tool: str) -> None:
    result = await session.call_tool(tool, {})
    if not isinstance(result, types.CallToolResult) or result.is_error:
        raise RuntimeError(f"tool {tool} answered an error: {result}")


async def _server_pid(session: ClientSession) -> int | None:
    status = await session.call_tool("status", {})
    found = status.structured_content if isinstance(status, types.CallToolResult) else None
    pid = (found or {}).get("pid")
    return int(pid) if isinstance(pid, int) else None


class McpParent(AsyncAgent):
    """Measures MCP calls to a child, on request of the bench (``VsmClient.call``)."""

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "calls":
            return await self._calls(ctx, body)
        if kind == "rate":
            return await self._rate(ctx, body)
        if kind == "rr":
            return await self._rr(ctx, body)
        return {"unknown": kind}

    async def _calls(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        """``n`` sequential calls of ``tool`` on one session, after ``warm`` to warm up."""
        child, tool, n, warm = str(body["child"]), str(body["tool"]), int(body["n"]), 5
        async with ctx.mcp_client(child) as session:
            pids = {"client": os.getpid(), "server": await _server_pid(session)}
            pids["broker"] = body.get("broker")
            for _ in range(warm):  # the first call also lists the tools (the SDK's cache)
                await _call(session, tool)
            ms: list[float] = []
            cpu = CpuOf(pids)
            for _ in range(n):
                t = time.perf_counter()
                await _call(session, tool)
                ms.append((time.perf_counter() - t) * 1e3)
            used = cpu.stop()
        return {"ms": ms, "cpu": used}

    async def _rate(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        """``clients`` sessions with the child, each calling ``noop`` one call after another
        for ``seconds``; the window runs from the go until the last call came back."""
        child, clients, seconds = str(body["child"]), int(body["clients"]), float(body["seconds"])
        async with contextlib.AsyncExitStack() as stack:
            sessions = [
                await stack.enter_async_context(ctx.mcp_client(child)) for _ in range(clients)
            ]
            pids = {"client": os.getpid(), "server": await _server_pid(sessions[0])}
            pids["broker"] = body.get("broker")
            for s in sessions:
                await _call(s, NOOP)
            ms: list[float] = []
            counts = [0] * clients

            async def loop(i: int, session: ClientSession, until: float) -> None:
                while time.perf_counter() < until:
                    t = time.perf_counter()
                    await _call(session, NOOP)
                    ms.append((time.perf_counter() - t) * 1e3)
                    counts[i] += 1

            cpu = CpuOf(pids)
            start = time.perf_counter()
            until = start + seconds
            await asyncio.gather(*(loop(i, s, until) for i, s in enumerate(sessions)))
            took = time.perf_counter() - start
            used = cpu.stop()
        return {"calls": sum(counts), "seconds": took, "ms": ms, "cpu": used, "per": counts}

    async def _rr(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        """``ctx.request`` of the same child, for the same pair's plain request/reply."""
        child, n = str(body["child"]), int(body["n"])
        server = (await ctx.request(child, "pid"))["pid"]
        for _ in range(5):  # the first request opens the reply consumer
            await ctx.request(child, "echo")
        out: list[float] = []
        cpu = CpuOf({"client": os.getpid(), "server": server, "broker": body.get("broker")})
        for _ in range(n):
            t = time.perf_counter()
            await ctx.request(child, "echo")
            out.append((time.perf_counter() - t) * 1e3)
        return {"ms": out, "cpu": cpu.stop()}


class McpChild(AsyncAgent):
    """Offers ``noop`` over MCP; answers ``echo`` and ``pid`` requests."""

    async def start(self, ctx: AgentContext) -> None:
        ctx.mcp.tool(NOOP, self._noop, "Does nothing: the bench's round trip.", read_only=True)

    @staticmethod
    async def _noop(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {}

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "pid":
            return {"pid": os.getpid()}
        return {} if kind == "echo" else {"unknown": kind}
