"""Agents of the nervous-system benchmarks: a parent that measures and children that write.

Every time is ``CLOCK_MONOTONIC``, which on Linux is one clock for every process of the
machine, so a time taken in one VSM can be subtracted from a time taken in another.

The parent learns of a child's state update only by reading its replica
(``ctx.state.child_get``): the agent API has no call on arrival, so the parent looks. For
the latency it looks on every turn of its loop while a probe is due (a timer of 0.5 ms would
wake only every 1-1.5 ms); the mean loop turn is returned with the samples.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vsmd.agents import AgentContext, AsyncAgent, Sender

# The loop's timers wake no finer than epoll's 1 ms: the parent sleeps until this long before
# the next probe can be written, then looks at its replica on every loop turn until it is there.
LEAD = 0.003


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _data(ctx: AgentContext, child: str, key: str) -> Any:
    return ctx.state.child_get(child, key)


class NerveParent(AsyncAgent):
    """Measures what its children do, on request of the bench (``VsmClient.call``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.reports: dict[str, dict[str, float]] = {}

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "arrived":
            self.reports[sender.id] = body["t"]
            return {}
        handlers = {
            "latency": self._latency,
            "rate": self._rate,
            "rr": self._rr,
            "bcast": self._bcast,
            "arrivals": self._arrivals,
        }
        fn = handlers.get(kind)
        return {"unknown": kind} if fn is None else await fn(ctx, body)

    async def _latency(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        """The child writes ``n`` probes ``gap`` s apart, each carrying its write time; the
        parent takes the time it first sees each one in its replica."""
        child, n, gap = str(body["child"]), int(body["n"]), float(body["gap"])
        run = now()
        seen: dict[int, float] = {}
        spins, spinning = 0, 0.0
        await ctx.send(child, "probe", {"run": run, "n": n, "gap": gap})
        deadline = now() + n * gap + 30.0
        expect: float | None = None  # the earliest the next probe can be written
        while len(seen) < n and now() < deadline:
            t = now()
            if expect is not None and expect - t > LEAD:
                await asyncio.sleep(expect - t - LEAD)
            else:
                await asyncio.sleep(0)  # one loop turn: the replica is looked at after each
                spins += 1
                spinning += now() - t
            probe = _data(ctx, child, "probe")
            if isinstance(probe, list) and probe[0] == run and probe[1] not in seen:
                seen[probe[1]] = now() - probe[2]
                expect = probe[2] + gap
        return {
            "ms": [v * 1e3 for v in seen.values()],
            "missed": n - len(seen),
            "turn_ms": spinning / max(spins, 1) * 1e3,
        }

    async def _rate(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        """Every child writes on a schedule, each write of a run to a key of its own; the
        parent counts what its replica holds until it has every child's last write.

        A child's progress mark (``burst``) travels in the same delta as the writes made
        before it, or after them (deltas go out in order), so a mark of ``i`` in the replica
        means the replica has the child's first ``i`` writes. The parent reads only the marks
        (``child_get``), seldom while they write.
        """
        children, seconds = list(body["children"]), float(body["seconds"])
        run = now()
        start = now()
        ask = {"run": run, "seconds": seconds, "every": body["every"]}
        await ctx.broadcast("burst", ask, depth=1)
        deadline = start + seconds + 60.0
        seen: dict[str, int] = {}
        done = 0
        while now() < deadline:
            await asyncio.sleep(0.05 if now() < start + seconds else 0.005)
            done = 0
            for cid in children:
                b = _data(ctx, cid, "burst")
                if isinstance(b, list) and b[0] == run:
                    seen[cid] = int(b[1])
                    done += 1 if b[2] else 0
            if done == len(children):
                break
        took = now() - start
        return {"writes": sum(seen.values()), "seconds": took, "finished": done}

    async def _rr(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        child, n = str(body["child"]), int(body["n"])
        for _ in range(5):  # the first request opens the reply consumer
            await ctx.request(child, "echo")
        out: list[float] = []
        for _ in range(n):
            t = time.perf_counter()
            await ctx.request(child, "echo")
            out.append((time.perf_counter() - t) * 1e3)
        return {"ms": out}

    async def _bcast(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        rounds, gap = int(body["rounds"]), float(body["gap"])
        sent: list[float] = []
        took: list[float] = []  # ms until ctx.broadcast returned: the broker's confirm
        for r in range(rounds):
            t0 = now()
            await ctx.broadcast("mark", {"round": r})
            took.append((now() - t0) * 1e3)
            sent.append(t0)
            await asyncio.sleep(gap)  # every receiver is done before the next round
        return {"t0": sent, "took_ms": took}

    async def _arrivals(self, ctx: AgentContext, body: dict[str, Any]) -> dict[str, Any]:
        expect, timeout = int(body["expect"]), float(body["timeout"])
        self.reports = {}
        await ctx.broadcast("report", {"to": ctx.vsm_id})
        deadline = now() + timeout
        while len(self.reports) < expect and now() < deadline:
            await asyncio.sleep(0.01)
        reports, self.reports = self.reports, {}
        return {"reports": reports}


class NerveChild(AsyncAgent):
    """Writes its state when asked; answers requests; notes when broadcasts arrive."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.arrivals: dict[str, float] = {}

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "mark":
            self.arrivals[str(body["round"])] = now()  # first: nothing before the time taken
            return {}
        if kind == "echo":
            return {}
        if kind == "probe":
            for i in range(int(body["n"])):
                ctx.state.set("probe", [body["run"], i, now()])
                await asyncio.sleep(float(body["gap"]))
            return {}
        if kind == "burst":
            await self._burst(ctx, body["run"], float(body["seconds"]), float(body["every"]))
            return {}
        if kind == "report":
            arrivals, self.arrivals = self.arrivals, {}
            await ctx.send(str(body["to"]), "arrived", {"t": arrivals})
            return {}
        return {"unknown": kind}

    @staticmethod
    async def _burst(ctx: AgentContext, run: float, seconds: float, every: float) -> None:
        """A write every ``every`` s on a fixed schedule, the ``i``-th of a run to key
        ``w<i>``: no write replaces another of its run, so every one the parent counts crossed
        the broker. Behind the schedule, the writes due are made at once; after them the
        progress mark, ``[run, i, done]``.

        It always sleeps at least a timer tick: with a hundred writers on a small machine,
        catching up without sleeping takes the CPU that the broker needs to confirm a delta.
        """
        i, start = 0, now()
        while (t := now()) < start + seconds:
            due = int((t - start) / every) + 1
            while i < due:
                i += 1
                ctx.state.set(f"w{i}", [run, i])
            ctx.state.set("burst", [run, i, False])
            await asyncio.sleep(max(0.001, start + i * every - now()))
        ctx.state.set("burst", [run, i, True])
