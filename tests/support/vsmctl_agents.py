"""An agent for the vsmctl messaging tests: it keeps what reaches it and tells on ``log``.

Loaded with ``agent_modules = ["tests.support.agents", "tests.support.vsmctl_agents"]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, Sender


class MessageLogAgent(AsyncAgent):
    """Records every message but ``log`` (kind, body, sender id and path); ``log`` answers
    ``{"got": [...]}`` in the order they came. ``hold`` answers after ``seconds`` (handlers of
    an async agent overlap, so ``log`` still answers meanwhile)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.got: list[dict[str, Any]] = []

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "log":
            return {"got": self.got}
        self.got.append({"kind": kind, "body": body, "sender": sender.id, "path": sender.path})
        if kind == "hold":
            await asyncio.sleep(float(body.get("seconds", 0)))
        return {"me": ctx.path, "kind": kind}


def register_agents(registry: AgentRegistry) -> None:
    registry.register("msglog", MessageLogAgent)
