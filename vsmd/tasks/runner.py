"""What happens to one delivery on a worker's task queue.

Every delivery ends in exactly one of: a result (replied, acked), another attempt (published
again with the count raised, acked), or a final failure (replied and dead-lettered, acked).
Acks come last, so a worker that dies at any point has the broker hand the task out again;
the delivery after such a death comes ``redelivered`` and counts the lost attempt before it
runs, so a task that kills its worker every time still ends in the dead-letter queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vsmd.errors import AgentError, BrokerError, ProtocolError, VsmdError
from vsmd.protocol import error_reply, ok_reply
from vsmd.tasks.api import Delivery
from vsmd.tasks.message import TaskRequest, describe
from vsmd.tasks.registry import RunSync, TaskRegistry, run_task

log = logging.getLogger("vsmd.tasks")
WENT_DOWN = "the worker went down during the task"


@dataclass
class Counts:
    """Since the worker's process started; the agent reports them upward."""

    done: int = 0
    failed: int = 0  # final failures: dead-lettered or refused
    retried: int = 0
    running: int = 0


class TaskRunner:
    def __init__(
        self,
        registry: TaskRegistry,
        max_attempts: int,
        run_sync: RunSync,
        admit: Callable[[str | None], None],
        limit: int,
        vsm_path: str = "",
    ) -> None:
        self.registry = registry
        self.max_attempts = max_attempts
        self.run_sync = run_sync
        self.admit = admit
        self.limit = limit  # bytes of a task message
        self.path = vsm_path
        self.counts = Counts()

    async def __call__(self, d: Delivery) -> None:
        self.counts.running += 1
        try:
            await self._settle(d)
            await d.ack()
        except BrokerError as err:
            # Nothing can be acked on a lost connection: the broker hands the task out again.
            log.warning("%s: task left unsettled: %s", self.path, err.message)
        finally:
            self.counts.running -= 1

    async def _settle(self, d: Delivery) -> None:
        try:
            req = TaskRequest.decode(d.body, self.limit)
            self.admit(d.user)
            fn = self.registry.get(req.task)
        except VsmdError as err:
            # Refused outright (malformed, not allowed, unknown task): another try would be too.
            await self._refuse(d, err)
            return
        attempts = d.attempts
        if d.redelivered:
            attempts += 1  # the delivery before this one never ended: it counts
            if attempts >= self.max_attempts:
                await self._give_up(d, req, attempts, WENT_DOWN)
            else:
                await self._again(d, attempts, WENT_DOWN)
            return
        try:
            payload = ok_reply(await run_task(fn, req.args, self.run_sync))
        except ProtocolError as err:  # the task says its input is bad: no retry mends that
            await self._give_up(d, req, attempts + 1, f"{err.code}: {err.message}", err)
            return
        except Exception as exc:
            log.info("%s: task %s (%s) failed: %s", self.path, req.task, req.id, describe(exc))
            if attempts + 1 < self.max_attempts:
                await self._again(d, attempts + 1, describe(exc))
            else:
                await self._give_up(d, req, attempts + 1, describe(exc))
            return
        if d.reply_to:
            await d.reply(payload)
        self.counts.done += 1

    async def _again(self, d: Delivery, attempts: int, error: str) -> None:
        await d.retry(attempts, error)
        self.counts.retried += 1

    async def _refuse(self, d: Delivery, err: VsmdError) -> None:
        """Answered where someone waits, else kept on the dead-letter queue with its reason."""
        self.counts.failed += 1
        log.warning("%s: task refused: %s %s", self.path, err.code, err.message)
        if d.reply_to:
            await d.reply(error_reply(err))
            return
        task = str(err.details.get("task", ""))
        await d.dead_letter(f"{err.code}: {err.message}", task, err.message, d.attempts)

    async def _give_up(
        self,
        d: Delivery,
        req: TaskRequest,
        attempts: int,
        error: str,
        cause: VsmdError | None = None,
    ) -> None:
        """A final failure: the submitter gets the error, the dead-letter queue the task."""
        self.counts.failed += 1
        err = cause or AgentError(
            f"task {req.task!r} failed after {attempts} attempt(s): {error}",
            task=req.task,
            attempts=attempts,
        )
        if d.reply_to:
            await d.reply(error_reply(err))
        await d.dead_letter(f"{err.code}: {err.message}", req.task, error, attempts)


def summary(counts: Counts) -> dict[str, Any]:
    return {
        "done": counts.done,
        "failed": counts.failed,
        "retried": counts.retried,
        "running": counts.running,
    }
