"""Agents that ship with vsmd."""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from vsmd.agents import AgentContext, AsyncAgent
from vsmd.errors import VsmdError

log = logging.getLogger("vsmd.agents")


class TreeAgent(AsyncAgent):
    """Grows a subtree over the bus: ``fanout`` children, each a TreeAgent one level shallower.

    Settings: ``fanout`` (default 2), ``levels`` (default 1: children but no grandchildren),
    ``leaf`` (the agent of the last level, default ``tree``: a leaf that does nothing).
    Each child is asked for by the VSM itself, the way any agent asks for children.
    """

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "fanout": {"type": "integer", "minimum": 0, "maximum": 1000},
            "levels": {"type": "integer", "minimum": 0, "maximum": 16},
            "leaf": {"type": "string", "minLength": 1},
        },
        "additionalProperties": False,
    }

    async def start(self, ctx: AgentContext) -> None:
        fanout = int(self.config.get("fanout", 2))
        levels = int(self.config.get("levels", 1))
        if levels < 1:
            return
        leaf = str(self.config.get("leaf", "tree"))
        child: dict[str, Any] = {"fanout": fanout, "levels": levels - 1, "leaf": leaf}
        agent = "tree" if levels > 1 else leaf
        for i in range(fanout):
            try:
                await ctx.spawn_child(name=f"c{i}", agent=agent, config=child)
            except VsmdError as err:
                if err.code == "CONFLICT":
                    continue  # already there: restored from the journal after a daemon restart
                log.warning("%s: child %d refused: %s %s", ctx.path, i, err.code, err.message)


class ReadingAgent(AsyncAgent):
    """A leaf of the demo: every tick it takes a reading (the host's 1-minute load average) into
    its state, as gauge ``load`` and counter ``readings``, which its parents sum up in their
    subtree summaries. A policy ``x-paused = true`` set anywhere above it pauses it.
    """

    async def tick(self, ctx: AgentContext) -> None:
        if ctx.state.policy.get("x-paused") is True:
            ctx.state.health("degraded")
            return
        ctx.state.gauge("load", round(os.getloadavg()[0], 2))
        ctx.state.count("readings")
        ctx.state.health("ok")
