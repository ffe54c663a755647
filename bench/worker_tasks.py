"""Tasks of the worker benchmark, named in a worker's ``tasks_modules``: tasks that do nothing,
so what is measured is what a task costs on its way through the worker and the broker."""

from __future__ import annotations

from typing import Any

from vsmd.tasks.registry import TaskRegistry

NOOP = "bench.noop"  # a plain function: the worker runs it in one of its threads
ANOOP = "bench.anoop"  # an async def: the worker runs it on the VSM's loop
ASYNC_KIND = "async_"  # in the figures' keys of batches of ANOOP: worker.<k>.async_...


def noop(args: dict[str, Any]) -> None:
    return None


async def anoop(args: dict[str, Any]) -> None:
    return None


def register_tasks(registry: TaskRegistry) -> None:
    registry.register(NOOP, noop)
    registry.register(ANOOP, anoop)
