"""The worker benchmark's processes: the submitter of tasks (the same for vsmd's workers and for
the floor) and the floor itself, a consumer on the VSM's own AMQP client (vsmd/amqp/) bare, on
uvloop as a VSM is, doing a worker's broker work. The submitter is aio-pika, as TaskSubmitter.

``python -m bench.worker_floor ROLE JSON``. ``submit``: connects, builds every task, runs a
few one at a time to warm up, prints ``ready``, waits for ``go`` on stdin, then publishes them
all and prints one JSON line once every result is back. ``consume``: declares its durable
queue, prints ``ready`` and serves it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from typing import Any

import aio_pika
import aio_pika.abc
import orjson
import uvloop

from bench.resources import cpu_of
from bench.worker_tasks import register_tasks
from vsmd import amqp
from vsmd.tasks.message import TaskRequest
from vsmd.tasks.registry import TaskRegistry

REPLY_TO = "amq.rabbitmq.reply-to"
SENDER = "vsmctl"  # what TaskSubmitter puts in a task's envelope


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


def own_cpu() -> float:
    """CPU seconds of every thread of this process (aio-pika may run a thread or two)."""
    return cpu_of([os.getpid()])


# --- the submitter ----------------------------------------------------------------------------


class Results:
    """Replies to the tasks in flight, matched by correlation id, as TaskChannel matches them."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[bytes]] = {}
        self.pending: set[str] = set()
        self.bad: list[str] = []
        self.all_in: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_reply(self, msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        corr = msg.correlation_id or ""
        fut = self.waiting.pop(corr, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.body)
        if corr in self.pending:
            self.pending.discard(corr)
            if orjson.loads(msg.body).get("ok") is not True:
                self.bad.append(msg.body.decode(errors="replace")[:300])
            if not self.pending and not self.all_in.done():
                self.all_in.set_result(time.perf_counter())


async def submit(a: dict[str, Any]) -> None:
    """Tasks as TaskSubmitter sends them: persistent, mandatory, confirmed, JSON, direct
    reply-to on the publishing channel. Only, ``window`` publishes are in flight at once
    instead of one, so that publishing is not what limits the rate measured."""
    queues: list[str] = a["queues"]
    n, window, task, user = int(a["n"]), int(a["window"]), str(a["task"]), a.get("user")
    conn = await aio_pika.connect(a["url"])
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    results = Results()
    replies = await ch.get_queue(REPLY_TO, ensure=False)
    await replies.consume(results.on_reply, no_ack=True)

    def message(corr: str) -> aio_pika.Message:
        return aio_pika.Message(
            TaskRequest(task, {}, SENDER).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=user,
            reply_to=REPLY_TO,
            correlation_id=corr,
        )

    loop = asyncio.get_running_loop()
    for queue in queues:  # one at a time through each: connections, threads, caches warm
        for _ in range(int(a["warm"])):
            corr = uuid.uuid4().hex
            fut = results.waiting[corr] = loop.create_future()
            await ch.default_exchange.publish(message(corr), queue, mandatory=True)
            await asyncio.wait_for(fut, 30.0)
    # Built before the go: the window holds the publishing, not the making of the messages.
    batch = [(queues[i % len(queues)], message(uuid.uuid4().hex)) for i in range(n)]
    results.pending = {m.correlation_id or "" for _q, m in batch}
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)

    async def lane(k: int) -> None:
        for queue, msg in batch[k::window]:
            await ch.default_exchange.publish(msg, queue, mandatory=True)

    cpu = own_cpu()
    start = time.perf_counter()
    await asyncio.gather(*(lane(k) for k in range(min(window, n))))
    published = time.perf_counter()
    last = await asyncio.wait_for(results.all_in, float(a["timeout"]))
    used = own_cpu() - cpu
    emit(
        {
            "seconds": last - start,
            "publish_s": published - start,
            "cpu_s": used,
            "bad": len(results.bad),
            "first_bad": results.bad[:1],
        }
    )
    await conn.close()


# --- the floor: one bare consumer -------------------------------------------------------------


async def consume(a: dict[str, Any]) -> None:
    """What a worker does with a task on the wire, and nothing else: a consuming channel with
    prefetch = concurrency and manual acks, the result published with confirms on the
    connection's other channel (as a VSM's replies go on its main one), then the ack."""
    registry = TaskRegistry()
    register_tasks(registry)
    conn = await amqp.connect(a["url"])
    out = await conn.channel(confirms=True)
    inc = await conn.channel(confirms=True, prefetch=int(a["prefetch"]))
    args: dict[str, Any] = {"x-expires": int(a["expires"] * 1000)}
    await inc.queue_declare(a["queue"], durable=True, arguments=args)
    handling: set[asyncio.Task[None]] = set()

    async def handle(msg: amqp.Message) -> None:
        body = orjson.loads(msg.body)["body"]
        result = registry.get(body["task"])(body.get("args", {}))  # the same no-op, called
        props = amqp.Properties(
            content_type="application/json", correlation_id=msg.properties.correlation_id
        )
        reply = orjson.dumps({"ok": True, "result": result})
        await out.publish(reply, "", msg.properties.reply_to or "", props)
        msg.ack()

    def deliver(msg: amqp.Message) -> None:
        task = asyncio.get_running_loop().create_task(handle(msg))  # a worker's way too
        handling.add(task)
        task.add_done_callback(handling.discard)

    await inc.consume(a["queue"], deliver)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await conn.close()


ROLES = {"submit": submit, "consume": consume}

if __name__ == "__main__":
    role = sys.argv[1]
    run = uvloop.run if role == "consume" else asyncio.run  # the consumer runs as a VSM does
    run(ROLES[role](orjson.loads(sys.argv[2])))
