"""Agents for the messaging tests: they record what reaches them and act on command.

Loaded with ``agent_modules = ["tests.support.agents", "tests.support.msg_agents"]``.
"""

from __future__ import annotations

import time
from typing import Any

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, BaseAgent, Sender, SyncContext
from vsmd.errors import VsmdError


class RecorderAgent(AsyncAgent):
    """Records every message; ``log`` returns them, ``do`` makes the VSM send one itself.

    ``do`` takes ``{"op": send|request|broadcast|alert, "target", "kind", "body", "depth",
    "timeout"}`` and answers ``{"result": ...}`` or ``{"error": code, "message": ...}``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.got: list[dict[str, Any]] = []

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "log":
            return {"got": self.got}
        if kind == "do":
            return await self._do(ctx, body)
        self.got.append({"kind": kind, "body": body, "sender": sender.id, "path": sender.path})
        return {"me": ctx.path, "kind": kind}

    async def _do(self, ctx: AgentContext, cmd: dict[str, Any]) -> dict[str, Any]:
        op, kind, body = cmd["op"], cmd.get("kind", "msg"), cmd.get("body") or {}
        try:
            if op == "send":
                await ctx.send(cmd["target"], kind, body)
                return {"result": None}
            if op == "request":
                answer = await ctx.request(cmd["target"], kind, body, cmd.get("timeout", 10.0))
                return {"result": answer}
            if op == "broadcast":
                await ctx.broadcast(kind, body, cmd.get("depth"))
                return {"result": None}
            if op == "alert":
                await ctx.alert(cmd.get("severity", "critical"), cmd.get("text", ""), body)
                return {"result": None}
        except VsmdError as err:
            return {"error": err.code, "message": err.message}
        return {"error": "UNKNOWN_OP"}


class BlockerAgent(BaseAgent):
    """A plain agent whose ``block`` handler holds its worker thread for ``seconds``."""

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "block":
            time.sleep(float(body.get("seconds", 10)))
        return {"done": kind}


class FailingAgent(AsyncAgent):
    """Raises from ``handle``: OSError on ``oserror``, RuntimeError on anything else."""

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "fine":
            return {"fine": True}
        if kind == "oserror":
            raise OSError(28, "No space left on device")
        raise RuntimeError("the agent's own bug")


def register_agents(registry: AgentRegistry) -> None:
    registry.register("recorder", RecorderAgent)
    registry.register("blocker", BlockerAgent)
    registry.register("failing", FailingAgent)
