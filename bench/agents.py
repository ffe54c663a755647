"""Agents the bench loads into vsmd with ``agent_modules = ["bench.agents"]``."""

from __future__ import annotations

import gc

from bench.mcp_agents import McpChild, McpParent
from bench.nerve_agents import NerveChild, NerveParent
from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent


class CollectAgent(AsyncAgent):
    """Runs one full garbage collection at start, as any agent's own allocations soon would.

    A full collection writes to the header of every tracked object: without gc.freeze in the
    fork server, that un-shares the pages the VSM inherited.
    """

    async def start(self, ctx: AgentContext) -> None:
        gc.collect()


def register_agents(registry: AgentRegistry) -> None:
    registry.register("gccollect", CollectAgent)
    registry.register("nerveparent", NerveParent)
    registry.register("nervechild", NerveChild)
    registry.register("mcpparent", McpParent)
    registry.register("mcpchild", McpChild)
