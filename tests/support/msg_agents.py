"""Agents for the messaging tests: they record what reaches them and act on command.

Loaded with ``agent_modules = ["tests.support.agents", "tests.support.msg_agents"]``.
"""

from __future__ import annotations

import asyncio
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
        op = cmd["op"]
        handler = OPS.get(op) or STATE_OPS.get(op)
        if handler is None:
            return {"error": "UNKNOWN_OP"}
        try:
            return {"result": await handler(ctx, cmd)}
        except VsmdError as err:
            return {"error": err.code, "message": err.message}


async def _send(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    await ctx.send(cmd["target"], cmd.get("kind", "msg"), cmd.get("body") or {})


async def _request(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    body = cmd.get("body") or {}
    return await ctx.request(cmd["target"], cmd.get("kind", "msg"), body, cmd.get("timeout", 10.0))


async def _broadcast(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    await ctx.broadcast(cmd.get("kind", "msg"), cmd.get("body") or {}, cmd.get("depth"))


async def _alert(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    await ctx.alert(cmd.get("severity", "critical"), cmd.get("text", ""), cmd.get("body") or {})


async def _parallel(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    """``n`` requests to ``target`` at once (the first ones this VSM makes, in the test)."""
    asks = (ctx.request(cmd["target"], "ask", {"i": i}) for i in range(int(cmd["n"])))
    return [answer["kind"] for answer in await asyncio.gather(*asks)]


async def _break_calls(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    """A publish on the VSM's calls channel that the broker answers by closing that channel
    (404: no such exchange), as it would a refused publish in secure mode."""
    calls = ctx._rt.bus.calls  # type: ignore[attr-defined]  # the runtime's, on purpose
    await calls.publish("x", b"{}", False, "vsmd-test-no-such-exchange", {})


OPS = {
    "send": _send,
    "break_calls": _break_calls,
    "request": _request,
    "broadcast": _broadcast,
    "alert": _alert,
    "parallel": _parallel,
}


async def _set(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    for key, value in (cmd.get("data") or {}).items():
        ctx.state.set(key, value)
    for name, n in (cmd.get("counts") or {}).items():
        ctx.state.count(name, n)
    if "health" in cmd:
        ctx.state.health(cmd["health"])
    for key, value in (cmd.get("policy") or {}).items():
        ctx.state.set_policy(key, value)
    if cmd.get("flush"):
        await ctx.state.flush()
    return None


async def _show(ctx: AgentContext, cmd: dict[str, Any]) -> Any:
    return {
        "data": ctx.state.data(),
        "policy": ctx.state.policy,
        "children": ctx.state.child_states(),
    }


STATE_OPS = {"state_set": _set, "state_show": _show}


class BlockerAgent(BaseAgent):
    """A plain agent whose ``block`` handler holds its worker thread for ``seconds``."""

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "block":
            time.sleep(float(body.get("seconds", 10)))
        return {"done": kind}


class FailingAgent(AsyncAgent):
    """Raises from ``handle``: OSError on ``oserror``, RuntimeError on anything else; answers
    what JSON cannot carry on ``notjson`` and ``intkeys``."""

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "fine":
            return {"fine": True}
        if kind == "oserror":
            raise OSError(28, "No space left on device")
        if kind == "notjson":
            return {"tags": {"a", "b"}}  # a set: orjson cannot encode it
        if kind == "intkeys":
            return {1: "one"}  # type: ignore[dict-item]
        raise RuntimeError("the agent's own bug")


class SlowbornAgent(AsyncAgent):
    """Takes ``born_after`` seconds (default 2) to construct: its VSM reports ready that late."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        time.sleep(float(config.get("born_after", 2)))


def register_agents(registry: AgentRegistry) -> None:
    registry.register("slowborn", SlowbornAgent)
    registry.register("recorder", RecorderAgent)
    registry.register("blocker", BlockerAgent)
    registry.register("failing", FailingAgent)
