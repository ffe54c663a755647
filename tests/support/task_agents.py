"""An agent that puts tasks on other VSMs' task queues as itself, for the secure-mode worker
test: the broker lets any VSM publish through the default exchange, so it is the worker that
must refuse whom it does not take tasks from (by the broker-checked user_id)."""

from __future__ import annotations

from typing import Any

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, Sender
from vsmd.bus.topology import Topology
from vsmd.errors import VsmdError
from vsmd.vsm.context import Context
from vsmd.vsm.task_queue import TaskQueue


class TaskPoke(AsyncAgent):
    """``poke`` {worker, task, args}: submits to that worker's queue and answers the outcome."""

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "spawn_worker":
            return await ctx.spawn_child(name="w", agent="worker", config=body)
        assert isinstance(ctx, Context)
        rt = ctx._rt  # a test's agent reaches past its context on purpose
        # The worker's queue object, as if it were ours: what it publishes carries our user_id.
        theirs = TaskQueue(rt.bus, rt.topo, rt.spec)
        theirs.name = Topology(rt.spec.namespace).task_queue(str(body["worker"]))
        try:
            result = await theirs.submit(str(body["task"]), dict(body["args"]), True, 20.0)
        except VsmdError as err:
            return {"error": err.to_dict()}
        return {"result": result}


def register_agents(registry: AgentRegistry) -> None:
    registry.register("taskpoke", TaskPoke)
