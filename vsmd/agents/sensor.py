"""The ``sensor`` agent type: samples a source every ``period`` seconds and publishes the readings
upward through its state, each with a sequence number.

State (docs/agents.md): data ``reading`` (the latest: ``{"seq", "time", "value"}``), ``recent``
(the last ``keep``, oldest first), ``variety``, ``sensor`` (what it reads), ``error`` while the
source fails; counters ``readings``, ``variety`` and ``sensor_errors``, which every ancestor's
subtree summary sums; health ``degraded`` from the first failed sample, ``failing`` from the
``failing_after``-th in a row, ``ok`` again at the next reading. A failing source is never a
crash: the sensor keeps its process and samples again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, ClassVar

import orjson

from vsmd.agents import AgentContext, AsyncAgent, Sender
from vsmd.agents.http_client import holds
from vsmd.agents.report import StateWriter
from vsmd.agents.sensor_sources import SYSTEM_METRICS, fit, make_source
from vsmd.agents.variety import Variety
from vsmd.errors import ProtocolError, Unauthorized, VsmdError
from vsmd.mcp.registry import Caller

log = logging.getLogger("vsmd.agents")

RECENT_BUDGET = 24 * 1024  # bytes of JSON for `recent`: under half of the default message size
TIMEOUT_SLACK = 1.0  # the sources time out themselves; this guard is for reads in threads

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "source": {
            "type": "object",
            "properties": {
                "system": {
                    "type": "array",
                    "items": {"enum": list(SYSTEM_METRICS)},
                    "uniqueItems": True,
                },
                "file": {"type": "string", "minLength": 1, "maxLength": 4096},
                "http": {"type": "string", "pattern": "^https?://", "maxLength": 8192},
                "command": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 4096},
                    "minItems": 1,
                    "maxItems": 256,
                },
            },
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        },
        "period": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "keep": {"type": "integer", "minimum": 1, "maximum": 100},
        "max_bytes": {"type": "integer", "minimum": 16, "maximum": 8192},
        "resolution": {"type": "number", "exclusiveMinimum": 0},
        "window": {"type": "integer", "minimum": 1, "maximum": 10000},
        "failing_after": {"type": "integer", "minimum": 1, "maximum": 10000},
        "purpose": {"type": "string", "maxLength": 500},
    },
    "additionalProperties": False,
}

READ_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"last": {"type": "integer", "minimum": 1, "maximum": 100}},
    "additionalProperties": False,
}


class SensorAgent(AsyncAgent):
    """Samples a source every period and publishes numbered readings into its state.

    The source is the host (psutil), a file it tails, an HTTP endpoint or a command; one that
    fails shows as the VSM's health, never as a crash."""

    config_schema: ClassVar[dict[str, Any]] = CONFIG_SCHEMA
    # http only matters for an HTTP source: a sensor of another source works without it.
    capabilities: ClassVar[frozenset[str]] = frozenset({"state", "metrics", "mcp", "http"})

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.period = float(config.get("period", 5.0))
        self.timeout = float(config.get("timeout", 5.0))
        self.max_bytes = int(config.get("max_bytes", 1024))
        self.failing_after = int(config.get("failing_after", 3))
        resolution = config.get("resolution")
        self.variety = Variety(
            int(config.get("window", 100)), float(resolution) if resolution else None
        )
        self.source = make_source(config.get("source"), self.timeout, self.max_bytes)
        self.seq = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=int(config.get("keep", 10)))
        self.failures = 0  # failed samples in a row
        self.error: dict[str, Any] | None = None
        self._error_shown = False
        self._variety_shown = 0
        self._out: StateWriter | None = None
        self._task: asyncio.Task[None] | None = None  # the sampling loop, ours until stop

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, ctx: AgentContext) -> None:
        self._out = StateWriter(ctx.state, ctx.path)
        self._restore(ctx)
        self._out.set(
            "sensor",
            {"source": self.source.kind, "target": self.source.target, "period": self.period},
        )
        try:
            ctx.mcp.tool("read", self._tool, "The latest readings.", READ_SCHEMA, read_only=True)
        except Unauthorized as err:  # spawned without mcp: readable through its state only
            log.info("%s: no MCP tool: %s", ctx.path, err.message)
        if self.source.kind == "http" and not holds(ctx, "http"):
            # It will not be granted later: say so once, and keep the VSM up to be seen.
            self._fail(f"VSM {ctx.path} was not granted the http capability", at_once=True)
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sensor")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The loop ends only when stop cancels it; anything else is a bug to be seen."""
        if not task.cancelled() and task.exception() is not None:
            log.error("sensor: sampling stopped: %r", task.exception())
            self._writer().health("failing")

    async def stop(self, ctx: AgentContext) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.source.close()

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "read":
            return self.latest(body.get("last"))
        raise ProtocolError(f"sensor: unknown kind {kind[:64]!r}; it answers 'read'")

    async def _tool(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.latest(args.get("last"))

    def latest(self, last: Any = None) -> dict[str, Any]:
        n = last if isinstance(last, int) and not isinstance(last, bool) and last > 0 else None
        recent = list(self.recent)[-n:] if n else list(self.recent)
        return {
            "seq": self.seq,
            "reading": self.recent[-1] if self.recent else None,
            "recent": recent,
            "health": self._writer().current_health,
            "error": self.error,
            "variety": self.variety.distinct,
            "source": {"kind": self.source.kind, "target": self.source.target},
        }

    def _restore(self, ctx: AgentContext) -> None:
        """Go on from the state the daemon gave back: numbering continues after a restart."""
        prev = ctx.state.get("reading")
        if isinstance(prev, dict) and isinstance(prev.get("seq"), int):
            self.seq = prev["seq"]
        recent = ctx.state.get("recent")
        if isinstance(recent, list):
            self.recent.extend(r for r in recent if isinstance(r, dict))
        shown = ctx.state.get("variety")
        if isinstance(shown, dict) and isinstance(shown.get("distinct"), int):
            self._variety_shown = shown["distinct"]
        self._error_shown = ctx.state.get("error") is not None

    # --- sampling --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self._sample()
            # A fixed rate; a sample that overran its period skips the missed ones.
            due = max(due + self.period, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _sample(self) -> None:
        try:
            async with asyncio.timeout(self.timeout + TIMEOUT_SLACK):
                values = await self.source.sample()
        except TimeoutError:
            self._fail(f"no reading within {self.timeout:g} s")
        except VsmdError as err:
            self._fail(err.message)
        except Exception as exc:  # a source's own bug must not end the sampling
            log.exception("sensor: sample failed")
            self._fail(f"{type(exc).__name__}: {exc}")
        else:
            try:
                self._record(values)
            except VsmdError as err:  # a state write refused (TOO_LARGE with a small limit)
                self._fail(f"cannot publish the reading: {err.message}")

    def _record(self, values: list[Any]) -> None:
        out = self._writer()
        for raw in values:
            value, cut = fit(raw, self.max_bytes)
            self.seq += 1
            reading = {"seq": self.seq, "time": round(time.time(), 3), "value": value}
            if cut:
                reading["truncated"] = True
            self.recent.append(reading)
            self.variety.observe(value)
        if values:
            out.set("reading", self.recent[-1])
            out.set("recent", self._recent_within_budget())
            out.count("readings", len(values))
            self._show_variety()
        if self._error_shown:
            out.delete("error")
            self._error_shown = False
        self.failures, self.error = 0, None
        out.health("ok")

    def _recent_within_budget(self) -> list[dict[str, Any]]:
        kept = list(self.recent)
        while len(kept) > 1 and len(orjson.dumps(kept)) > RECENT_BUDGET:
            kept.pop(0)
        return kept

    def _show_variety(self) -> None:
        """Variety as a counter, so that every ancestor's subtree summary sums it: the counter
        is moved by the change, up or down, and ``data.variety`` says what it stands at."""
        k = self.variety.distinct
        if k == self._variety_shown:
            return
        out = self._writer()
        out.count("variety", k - self._variety_shown)
        self._variety_shown = k
        out.set(
            "variety",
            {"distinct": k, "window": self.variety.window, "resolution": self.variety.resolution},
        )

    def _fail(self, message: str, at_once: bool = False) -> None:
        out = self._writer()
        self.failures += 1
        now = round(time.time(), 3)
        since = self.error["since"] if self.error else now
        self.error = {
            "message": message[:500],
            "time": now,
            "since": since,
            "consecutive": self.failures,
        }
        out.set("error", self.error)
        self._error_shown = True
        out.count("sensor_errors")
        failing = at_once or self.failures >= self.failing_after
        out.health("failing" if failing else "degraded")

    def _writer(self) -> StateWriter:
        assert self._out is not None  # made in start, before the loop and any message
        return self._out
