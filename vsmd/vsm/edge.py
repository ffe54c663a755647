"""What a dropped or refused broker connection looks like from the VSM's AMQP client
(vsmd/amqp/), and how a VSM says so: the edge where they become the errors a VSM reports
(vsmd/vsm/bus.py, calls.py, task_queue.py)."""

from __future__ import annotations

import asyncio

from vsmd import amqp

LOST: tuple[type[BaseException], ...] = (
    amqp.AmqpError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def describe(exc: BaseException) -> str:
    if isinstance(exc, amqp.AuthRefused):
        return "the broker refused the credentials"
    text = exc.message if isinstance(exc, amqp.AmqpError) else str(exc)
    return f"{type(exc).__name__}: {(text or type(exc).__name__)[:300]}"
