"""What a dropped or refused broker connection looks like from aio-pika and aiormq, and how a
VSM says so: the edge where their errors become vsmd's (vsmd/vsm/bus.py, calls.py,
task_queue.py)."""

from __future__ import annotations

import asyncio

import aio_pika.exceptions
import aiormq.exceptions

LOST: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel closed under us
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aio_pika.exceptions.ProbableAuthenticationError):
        return "the broker refused the credentials"
    return f"{type(exc).__name__}: {text[:300]}"
