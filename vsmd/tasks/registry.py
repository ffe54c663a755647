"""The tasks a worker can run: callables registered by name, never code from a message.

A module named in the worker's ``tasks_modules`` exposes ``register_tasks(registry)``; an
installed package names a task in the entry-point group ``vsmd.tasks`` (registered under the
entry point's name). A task takes the args dict and returns anything JSON can carry; a plain
function runs in a worker thread, an ``async def`` on the VSM's loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from vsmd import plugins
from vsmd.errors import ConfigError, NotFound, ProtocolError
from vsmd.tasks.message import check_name

Task = Callable[[dict[str, Any]], Any]
ENTRY_POINTS = "vsmd.tasks"


def is_async(fn: Task) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is what we inspect
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, name: str, fn: Task) -> None:
        try:
            check_name(name)
        except ProtocolError as err:
            raise ConfigError(err.message) from None
        if not callable(fn):
            raise ConfigError(f"task {name!r} is not callable")
        self._tasks[name] = fn

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, name: str) -> Task:
        found = self._tasks.get(name)
        if found is None:
            served = ", ".join(self.names()) or "none"
            raise NotFound(f"unknown task {name[:64]!r}; this worker serves: {served}", task=name)
        return found

    def only(self, names: Iterable[str]) -> TaskRegistry:
        """The same registry restricted to ``names``; ConfigError names any it lacks."""
        wanted = list(names)
        missing = [n for n in wanted if n not in self._tasks]
        if missing:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"no such tasks: {', '.join(missing)}; registered: {known}")
        out = TaskRegistry()
        for n in wanted:
            out.register(n, self._tasks[n])
        return out


def load_tasks(modules: Iterable[str], entry_points: bool = True) -> TaskRegistry:
    """Every task of the installed packages (``entry_points``) and of ``modules``; a module
    registered later wins a name. ConfigError for a module that cannot be used."""
    registry = TaskRegistry()
    if entry_points:
        for name, fn in plugins.entry_points(ENTRY_POINTS, "task"):
            registry.register(name, fn)
    for hook in plugins.module_hooks(modules, "register_tasks", "tasks"):
        hook(registry)
    return registry


RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]


async def run_task(fn: Task, args: dict[str, Any], run_sync: RunSync) -> Any:
    """Call the task: on the loop if it is async, else through ``run_sync`` (a thread)."""
    if is_async(fn):
        return await fn(args)
    result = await run_sync(lambda: fn(args))
    if inspect.isawaitable(result):  # a plain callable that hands back a coroutine
        return await result
    return result
