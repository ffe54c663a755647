"""Tasks for workers, from Python and from ``vsmctl submit``.

with VsmClient() as c:
    tasks = TaskSubmitter(c)
    print(tasks.submit(worker_id, "add", {"a": 1, "b": 2}, wait=True))   # 3
    print(tasks.submit(worker_id, "add", {"a": 1, "b": 2}))              # {"submitted": ...}
"""

from __future__ import annotations

import re
from typing import Any

from vsmctl.client import MAX_REPLY, SENDER, VsmClient
from vsmd.bus.tasks import TaskChannel
from vsmd.errors import (
    AgentError,
    BrokerError,
    NoDaemon,
    NotFound,
    ProtocolError,
    Unreachable,
    from_dict,
)
from vsmd.protocol import loads_object
from vsmd.tasks.message import STATUS_CALL, TaskRequest, check_args, check_name

_ID = re.compile(r"[0-9a-f]{12}")


class TaskSubmitter:
    """Submits tasks over a client's connection, on a channel of its own (kept for the next)."""

    def __init__(self, client: VsmClient) -> None:
        self.client = client
        self._tasks: TaskChannel | None = None

    def _channel(self) -> TaskChannel:
        if self._tasks is None:
            # The client's one connection; _channel() makes it (NoDaemon when no broker).
            self.client._channel()
            self._tasks = TaskChannel(self.client._conn)
        return self._tasks

    def submit(
        self,
        vsm_id: str,
        task: str,
        args: dict[str, Any] | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Put ``task`` with ``args`` on the worker's queue.

        Without ``wait``: ``{"submitted": <task id>, "task", "queue"}`` once the broker holds
        it (persistent, confirmed). With ``wait``: the task's result, or its final error raised
        (``AgentError`` once it failed ``max_attempts`` times, ``NotFound`` for a task the
        worker does not serve, ``ProtocolError`` for input the task refused), or ``Timeout``
        after ``timeout`` (the client's by default), while the task stays queued.
        ``NotFound`` for an unknown VSM or one that is no worker.
        """
        req = TaskRequest(check_name(task), check_args({} if args is None else args), SENDER)
        if not _ID.fullmatch(vsm_id):
            self.client.show(vsm_id)  # its NotFound: no VSM has such an id
            raise NotFound(f"no VSM with id {vsm_id!r}", id=vsm_id)
        queue = self.client.topo.task_queue(vsm_id)
        try:
            corr = self._publish(vsm_id, queue, req.encode(), wait)
            if not wait:
                return {"submitted": req.id, "task": task, "queue": queue}
            wait_for = self.client.timeout if timeout is None else timeout
            raw = self._channel().wait(corr, wait_for)
        except BrokerError as err:
            raise NoDaemon(f"lost the broker while submitting: {err.message}") from None
        reply = loads_object(raw, MAX_REPLY)
        if reply.get("ok") is not True:
            raise from_dict(reply.get("error") or {})
        return reply.get("result")

    def _publish(self, vsm_id: str, queue: str, body: bytes, wait: bool) -> str:
        try:
            return self._channel().publish(queue, body, wait)
        except Unreachable:
            pass
        # No queue yet: a worker declares it in its start, which may still run (a spawn
        # returns once the VSM is ready, before its agent started); its answer comes after.
        self._check_worker(vsm_id, queue)
        try:
            return self._channel().publish(queue, body, wait)
        except Unreachable:
            raise Unreachable(f"VSM {vsm_id} has no task queue", id=vsm_id) from None

    def _check_worker(self, vsm_id: str, queue: str) -> None:
        """NotFound or Unreachable for an unknown or stopped VSM (as ``call``), NotFound for
        one whose agent is no worker."""
        try:
            status = self.client.call(vsm_id, STATUS_CALL)
        except (ProtocolError, AgentError):  # its agent has no such call
            status = None
        if not isinstance(status, dict) or status.get("queue") != queue:
            raise NotFound(f"VSM {vsm_id} takes no tasks: its agent is no worker", id=vsm_id)
