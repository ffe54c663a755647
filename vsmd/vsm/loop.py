"""The event loop a VSM runs on: uvloop (libuv's loop, in C) by default, or the standard
library's. Each step of a VSM's work (a message in, a stream hop inside the MCP SDK, a reply
out) is a turn of this loop; uvloop makes each turn cheaper (docs/runtime-choice.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def _factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    return uvloop.new_event_loop if kind == "uvloop" else None


def run(main: Coroutine[Any, Any, T], kind: str) -> T:
    """Run ``main`` to its end on a new loop of ``kind`` (config.EVENT_LOOPS), then close it."""
    with asyncio.Runner(loop_factory=_factory(kind)) as runner:
        return runner.run(main)
