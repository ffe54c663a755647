"""The seams between the task runner, the VSM's task queue and the worker agent.

vsmd/vsm/task_queue.py implements both over the VSM's broker connection; the unit tests
implement :class:`Delivery` in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Delivery(Protocol):
    """One delivery of a message on a task queue. Each settling call returns once the broker
    has taken what it sent; the runner acks only after that, so a crash in between means the
    message comes again (at least once), never that it is lost."""

    body: bytes
    redelivered: bool  # the broker gave it out before and got no ack: that attempt ended mid-way
    attempts: int  # from the attempts header
    reply_to: str | None
    user: str | None  # the broker-checked user_id

    async def reply(self, payload: bytes) -> None:
        """The outcome to the submitter (``reply_to`` with its correlation id)."""
        ...

    async def retry(self, attempts: int, error: str) -> None:
        """Put the task back on the queue with ``attempts`` in its header."""
        ...

    async def dead_letter(self, reason: str, task: str, error: str, attempts: int) -> None:
        """Put it on the namespace's dead-letter queue with its error."""
        ...

    async def ack(self) -> None: ...


OnDelivery = Callable[[Delivery], Awaitable[None]]


class TaskQueueApi(Protocol):
    """``ctx.task_queue()``: this VSM's durable task queue (``<ns>.tasks.<vsm id>``)."""

    name: str
    limit: int  # bytes of a task message

    async def serve(self, on_delivery: OnDelivery, concurrency: int, expires: float | None) -> None:
        """Declare the queue and consume it, at most ``concurrency`` unacked deliveries at once,
        again after every reconnect. ``expires``: seconds unused before the broker drops it."""
        ...

    async def stop(self, grace: float) -> None:
        """Take no more deliveries; wait up to ``grace`` seconds for those being handled."""
        ...

    async def submit(
        self, task: str, args: dict[str, Any], wait: bool, timeout: float
    ) -> dict[str, Any] | Any:
        """Put a task on this VSM's own queue as this VSM; with ``wait``, its result."""
        ...

    def admit(self, user: str | None) -> None:
        """Unauthorized unless ``user`` may give this VSM tasks."""
        ...
