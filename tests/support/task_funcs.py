"""Tasks for the worker tests (tests/integration/test_agent_worker.py): named in a worker's
``tasks_modules``. They tell the test what happened through files in directories it names,
since they run in the worker's process."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

from vsmd.errors import ProtocolError
from vsmd.tasks.registry import TaskRegistry

DEADLINE = 30.0  # a task waiting for the test gives up after this long (a failed test)


def add(args: dict[str, Any]) -> dict[str, Any]:
    return {"sum": args["a"] + args["b"]}


async def shout(args: dict[str, Any]) -> str:
    await asyncio.sleep(0)  # an async task runs on the worker's loop
    return str(args.get("text", "")).upper()


def boom(args: dict[str, Any]) -> None:
    raise RuntimeError("boom")


def picky(args: dict[str, Any]) -> None:
    raise ProtocolError("picky: wants a 'thing'")


def _wait_for(check: Any, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def block(args: dict[str, Any]) -> dict[str, Any]:
    """Leaves a file in ``started`` for each attempt, then blocks until ``release`` exists."""
    started = Path(args["started"])
    (started / uuid.uuid4().hex).write_text(str(os.getpid()))
    release = Path(args["release"])
    if not _wait_for(release.exists, time.monotonic() + DEADLINE):
        raise TimeoutError("never released")
    return {"pid": os.getpid(), "attempts_seen": len(list(started.iterdir()))}


def overlap(args: dict[str, Any]) -> dict[str, Any]:
    """Sits in ``running`` until ``release`` exists, and answers the most tasks it saw there
    at once: a worker that runs more at once than it should shows it."""
    running = Path(args["running"])
    release = Path(args["release"])
    me = running / uuid.uuid4().hex
    me.touch()
    most = 0

    def released() -> bool:
        nonlocal most
        most = max(most, len(list(running.iterdir())))
        return release.exists()

    try:
        if not _wait_for(released, time.monotonic() + DEADLINE):
            raise TimeoutError("never released")
    finally:
        me.unlink()
    return {"most": most}


def register_tasks(registry: TaskRegistry) -> None:
    for name, fn in (
        ("add", add),
        ("shout", shout),
        ("boom", boom),
        ("picky", picky),
        ("block", block),
        ("overlap", overlap),
    ):
        registry.register(name, fn)
