"""Agents that ship with vsmd."""

from __future__ import annotations

import logging
from typing import Any

from vsmd.agents import AgentContext, AsyncAgent
from vsmd.errors import VsmdError

log = logging.getLogger("vsmd.agents")


class TreeAgent(AsyncAgent):
    """Grows a subtree over the bus: ``fanout`` children, each a TreeAgent one level shallower.

    Settings: ``fanout`` (default 2), ``levels`` (default 1: children but no grandchildren).
    Each child is asked for by the VSM itself, the way any agent asks for children.
    """

    async def start(self, ctx: AgentContext) -> None:
        fanout = int(self.config.get("fanout", 2))
        levels = int(self.config.get("levels", 1))
        if levels < 1:
            return
        child: dict[str, Any] = {"fanout": fanout, "levels": levels - 1}
        for i in range(fanout):
            try:
                await ctx.spawn_child(name=f"c{i}", agent="tree", config=child)
            except VsmdError as err:
                if err.code == "CONFLICT":
                    continue  # already there: restored from the journal after a daemon restart
                log.warning("%s: child %d refused: %s %s", ctx.path, i, err.code, err.message)
