"""The ``worker`` agent type: runs named tasks from a durable queue of its own.

At least once: a task is acked only after its outcome went out, so one that was running when
the VSM died is run again by the restarted VSM. At most ``concurrency`` run at once (the
queue's prefetch). A task that fails ``max_attempts`` times goes to ``<ns>.dead`` with its
error. What runs is only ever a callable registered by name (vsmd/tasks/registry.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, Sender
from vsmd.errors import ConfigError, ProtocolError, Unauthorized
from vsmd.mcp.registry import Caller
from vsmd.tasks.api import TaskQueueApi
from vsmd.tasks.message import STATUS_CALL
from vsmd.tasks.registry import TaskRegistry, load_tasks
from vsmd.tasks.runner import Counts, TaskRunner, summary

STOP_GRACE = 4.0  # of the 5 s an agent's stop may take: running tasks may finish meanwhile
MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
TASK_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"

SUBMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {"type": "string", "description": "The task's registered name."},
        "args": {"type": "object", "description": "What the task gets."},
        "wait": {"type": "boolean", "description": "Wait for the result (default true)."},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    },
    "required": ["task"],
    "additionalProperties": False,
}


class WorkerAgent(AsyncAgent):
    """Runs named tasks from a durable queue of its own: at least once, bounded concurrency,
    failures retried then dead-lettered."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 1000},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
            "tasks_modules": {"type": "array", "items": {"type": "string", "pattern": MODULE}},
            "tasks": {
                "type": "array",
                "items": {"type": "string", "pattern": TASK_NAME},
                "uniqueItems": True,
            },
            "queue_expires": {"type": ["integer", "null"], "minimum": 60},
        },
        "additionalProperties": False,
    }
    capabilities: ClassVar[frozenset[str]] = frozenset({"messaging", "metrics", "mcp"})
    # The daemon deletes the task queue of a VSM of such a type when it removes the VSM.
    owns_task_queue: ClassVar[bool] = True

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.concurrency = int(config.get("concurrency", 4))
        self.max_attempts = int(config.get("max_attempts", 3))
        expires = config.get("queue_expires", 7 * 24 * 3600)
        self.expires = float(expires) if expires is not None else None
        # Here, not in start: a module that fails to import fails the spawn (SPAWN_FAILED).
        self.registry = _served(load_tasks(config.get("tasks_modules", [])), config.get("tasks"))
        self.counts = Counts()
        self._reported = Counts()
        self._queue: TaskQueueApi | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self, ctx: AgentContext) -> None:
        queue = self._queue = ctx.task_queue()
        # Plain tasks block: a thread each, as many as may run at once.
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="task")
        executor = self._executor

        async def run_sync(fn: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)

        runner = TaskRunner(
            self.registry, self.max_attempts, run_sync, queue.admit, queue.limit, ctx.path
        )
        self.counts = runner.counts
        with contextlib.suppress(Unauthorized):  # a spawn that did not grant mcp: no tool
            ctx.mcp.tool(
                "submit_task",
                self._submit_tool,
                "Run one of this worker's tasks (through its queue); its result.",
                SUBMIT_SCHEMA,
            )
        await queue.serve(runner, self.concurrency, self.expires)

    async def _submit_tool(self, args: dict[str, Any], caller: Caller) -> Any:
        assert self._queue is not None
        wait = bool(args.get("wait", True))
        timeout = float(args.get("timeout", 30.0))
        return await self._queue.submit(str(args["task"]), args.get("args", {}), wait, timeout)

    async def tick(self, ctx: AgentContext) -> None:
        self._report(ctx)

    async def stop(self, ctx: AgentContext) -> None:
        if self._queue is not None:
            await self._queue.stop(STOP_GRACE)
        self._report(ctx)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == STATUS_CALL:
            return {
                "queue": self._queue.name if self._queue is not None else None,
                "tasks": self.registry.names(),
                "concurrency": self.concurrency,
                "max_attempts": self.max_attempts,
                **summary(self.counts),
            }
        raise ProtocolError(f"worker: unknown call {kind!r}; tasks go to its task queue")

    def _report(self, ctx: AgentContext) -> None:
        """Counters and the running gauge into the VSM's state, once a tick and only when they
        moved: a busy worker costs its parent and the daemon one update a second, not one per
        task."""
        now, last = self.counts, self._reported
        with contextlib.suppress(Unauthorized):  # a spawn that did not grant metrics
            if now.done != last.done:
                ctx.state.count("tasks_done", now.done - last.done)
            if now.failed != last.failed:
                ctx.state.count("tasks_failed", now.failed - last.failed)
            if now.running != last.running:
                ctx.state.gauge("tasks_running", now.running)
        self._reported = Counts(now.done, now.failed, now.retried, now.running)


def _served(registry: TaskRegistry, names: list[str] | None) -> TaskRegistry:
    if names is None:
        return registry
    if not names:
        raise ConfigError("worker: 'tasks' names no task; leave it out to serve every one")
    return registry.only(names)


def owns_task_queue(agents: AgentRegistry, agent: str) -> bool:
    """Whether VSMs of type ``agent`` have a task queue (the worker and its subclasses)."""
    return agent in agents and bool(getattr(agents.get(agent).factory, "owns_task_queue", False))
