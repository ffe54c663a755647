"""A VSM's durable task queue (``<ns>.tasks.<vsm id>``), on the VSM's one broker connection.

Unlike the inbox it is durable and not exclusive: it outlives the VSM's processes, so a task
that was being run when the process died is handed to the restarted one. The daemon deletes it
when the VSM is removed (not at its own shutdown: the journal brings the worker back).
Consumed on a channel of its own, whose prefetch is the worker's concurrency; settled
deliveries are published with confirms on the VSM's main channel before they are acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from vsmd import amqp
from vsmd.errors import BrokerError, ProtocolError, Timeout, Unauthorized, Unreachable
from vsmd.security.identity import DAEMON_USER, OPERATOR_USER, vsm_id_of
from vsmd.tasks.api import OnDelivery
from vsmd.tasks.message import (
    ATTEMPTS,
    ERROR,
    MAX_ERROR,
    REASON,
    TASK,
    VSM,
    TaskRequest,
    attempts_of,
    check_args,
    check_name,
)
from vsmd.vsm.calls import REPLY_TO
from vsmd.vsm.context import unpack_reply
from vsmd.vsm.edge import LOST, describe

if TYPE_CHECKING:
    from vsmd.bus.topology import Topology
    from vsmd.spec import VsmSpec
    from vsmd.vsm.bus import VsmBus

log = logging.getLogger("vsmd.vsm")
PERSISTENT = 2  # delivery mode: in a durable queue, tasks survive a broker restart


class TaskQueue:
    """Implements :class:`vsmd.tasks.api.TaskQueueApi`."""

    def __init__(self, bus: VsmBus, topo: Topology, spec: VsmSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.name = topo.task_queue(spec.vsm_id)
        self.limit = spec.max_message_bytes
        self.dead_queue = topo.dead_queue
        self._consumer: tuple[amqp.Channel, str] | None = None
        self._handling: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # --- consuming -------------------------------------------------------------------------

    async def serve(self, on_delivery: OnDelivery, concurrency: int, expires: float | None) -> None:
        arguments: dict[str, Any] = {"x-expires": int(expires * 1000)} if expires else {}

        async def handle(msg: amqp.Message) -> None:
            try:
                await on_delivery(AmqpDelivery(self, msg))
            except Exception:  # a bug of ours: the delivery comes again, and counts
                log.exception("vsm %s: a task delivery failed", self.spec.vsm_id)
                with contextlib.suppress(Exception):  # gone with the channel, or settled
                    msg.nack(requeue=True)

        def deliver(msg: amqp.Message) -> None:
            # Each delivery in a task of its own (the prefetch bounds them); ours to wait for.
            task = asyncio.get_running_loop().create_task(handle(msg))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

        async def setup(ch: amqp.Channel) -> None:
            if self._stopping:
                return
            await ch.qos(concurrency)
            await ch.queue_declare(self.name, durable=True, arguments=arguments)
            self._consumer = (ch, await ch.consume(self.name, deliver))

        await self.bus.attach(setup)

    async def stop(self, grace: float) -> None:
        self._stopping = True  # a reconnect meanwhile must not consume again
        if self._consumer is not None:
            ch, tag = self._consumer
            with contextlib.suppress(*LOST):
                await ch.cancel(tag)
        if self._handling:
            await asyncio.wait(set(self._handling), timeout=grace)

    def admit(self, user: str | None) -> None:
        """Secure mode: tasks from the daemon, operators, this VSM and its ancestors, judged by
        the broker-checked user_id. (A task put back for another attempt is the VSM's own.)"""
        if not self.spec.token_socket or user in (DAEMON_USER, OPERATOR_USER):
            return
        sender = vsm_id_of(user)
        if sender is not None and (sender == self.spec.vsm_id or sender in self.bus.ancestors):
            return
        raise Unauthorized(f"{user or 'an unnamed sender'} may not give {self.spec.path} tasks")

    # --- submitting to ourselves (the MCP tool submit_task) ---------------------------------

    async def submit(
        self, task: str, args: dict[str, Any], wait: bool, timeout: float
    ) -> dict[str, Any] | Any:
        req = TaskRequest(check_name(task), check_args(args), self.spec.vsm_id, self.spec.path)
        if len(req.encode()) > self.limit:
            raise ProtocolError(f"task is over {self.limit} bytes")
        if not wait:
            await self._publish(req, {})
            return {"submitted": req.id, "task": task, "queue": self.name}
        answer = _Answer()
        await self.bus.listen(req.id, answer, confirmed=True)
        try:
            await self._publish(req, {"reply_to": REPLY_TO, "correlation_id": req.id})
            try:
                raw = await asyncio.wait_for(asyncio.shield(answer.future), timeout)
            except TimeoutError:
                raise Timeout(
                    f"task {task!r} had no result within {timeout:g} s; it stays queued"
                ) from None
        finally:
            self.bus.unlisten(req.id)
        return unpack_reply(raw)

    async def _publish(self, req: TaskRequest, props: dict[str, Any]) -> None:
        self.bus.traffic.count_out()
        await self.bus.publish(
            self.name, req.encode(), exchange="", mandatory=True, delivery_mode=PERSISTENT, **props
        )


class _Answer:
    """A listener (vsmd.mcp.transport's Link protocol) for the one reply to a submitted task."""

    def __init__(self) -> None:
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_message(self, body: bytes) -> None:
        if not self.future.done():
            self.future.set_result(body)

    async def on_lost(self) -> None:
        if not self.future.done():
            self.future.set_exception(BrokerError("lost the broker before the task's result came"))

    async def on_returned(self, error: Unreachable) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class AmqpDelivery:
    """Implements :class:`vsmd.tasks.api.Delivery` for one delivered message."""

    def __init__(self, queue: TaskQueue, msg: amqp.Message) -> None:
        self._q = queue
        self._msg = msg
        self.body = msg.body
        self.redelivered = msg.redelivered
        self.attempts = attempts_of(msg.properties.headers or {})
        self.reply_to = msg.properties.reply_to
        self.correlation_id = msg.properties.correlation_id
        self.user = msg.properties.user_id

    def _live(self) -> None:
        """A delivery whose channel closed is the broker's again and will come anew: nothing
        of this attempt (one that outlived a lost connection) may reach anyone."""
        if not self._msg.channel.is_open:
            raise BrokerError("the task's channel closed; the broker hands it out again")

    async def reply(self, payload: bytes) -> None:
        assert self.reply_to is not None
        self._live()
        await self._q.bus.reply_confirmed(self.reply_to, self.correlation_id, payload)

    async def retry(self, attempts: int, error: str) -> None:
        self._live()
        # The submitter's reply_to and correlation id go along: the result still finds it.
        await self._q.bus.publish(
            self._q.name,
            self.body,
            exchange="",
            delivery_mode=PERSISTENT,
            headers={ATTEMPTS: attempts, ERROR: error[:MAX_ERROR]},
            reply_to=self.reply_to,
            correlation_id=self.correlation_id,
        )

    async def dead_letter(self, reason: str, task: str, error: str, attempts: int) -> None:
        self._live()
        headers = {
            REASON: reason[:MAX_ERROR],
            VSM: self._q.spec.vsm_id,
            TASK: task,
            ERROR: error[:MAX_ERROR],
            ATTEMPTS: attempts,
        }
        await self._q.bus.publish(
            self._q.dead_queue, self.body, exchange="", delivery_mode=PERSISTENT, headers=headers
        )

    async def ack(self) -> None:
        try:
            self._msg.ack()
        except LOST as exc:
            raise BrokerError(f"cannot ack a task: {describe(exc)}") from None
