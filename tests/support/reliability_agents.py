"""Agents for the reliability drills (broker loss, partition): state that changes on its own.

Loaded with ``agent_modules = ["tests.support.agents", "tests.support.msg_agents",
"tests.support.reliability_agents"]``.
"""

from __future__ import annotations

import signal
from typing import Any

from tests.support.msg_agents import RecorderAgent
from vsmd.agents import AgentContext, AgentRegistry, Sender


class TickerAgent(RecorderAgent):
    """Adds 1 to its state's data key ``n`` on every tick (so state flows through an outage),
    until ``pause``; ``show`` answers the VSM's own view of its data. Anything else is a
    RecorderAgent's: messages from the daemon (``child_unreachable``...) are kept for ``log``.
    Config ``ignore_term``: SIGTERM is ignored, so a terminate of it lasts its whole grace time."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.paused = False

    async def tick(self, ctx: AgentContext) -> None:
        if not self.paused:
            ctx.state.set("n", int(ctx.state.get("n", 0)) + 1)

    async def start(self, ctx: AgentContext) -> None:
        if self.config.get("ignore_term"):
            # Over the runtime's own handler: the daemon's SIGKILL after the grace ends it.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind in ("pause", "resume"):
            self.paused = kind == "pause"
            return {"paused": self.paused}
        if kind == "show":
            return {"data": ctx.state.data()}
        return await super().handle(ctx, kind, body, sender)


def register_agents(registry: AgentRegistry) -> None:
    registry.register("ticker", TickerAgent)
