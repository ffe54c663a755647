"""The floor of the nervous-system figures: bare aio-pika, one process per side.

``python -m bench.nerve_floor ROLE JSON``. Roles: ``sink`` and ``source`` (a publisher and a
consumer: one message at a time for latency, as fast as they go for rate) and ``server`` and
``client`` (request/reply with direct reply-to). A receiving side prints ``ready`` once it
consumes; every side prints one JSON line with its result. Times are ``CLOCK_MONOTONIC``, one
clock for every process of the machine.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import aio_pika
import aio_pika.abc
import orjson

REPLY_TO = "amq.rabbitmq.reply-to"


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def body(size: int, i: int) -> bytes:
    """A JSON message of ``size`` bytes carrying its send time, as a state delta carries it."""
    head = orjson.dumps({"i": i, "t": now(), "pad": ""})
    return head[:-2] + b"x" * max(0, size - len(head)) + b'"}'


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


async def sink(a: dict[str, Any]) -> None:
    n, mode = int(a["n"]), a["mode"]
    conn = await aio_pika.connect(a["url"])
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=64)
    queue = await ch.declare_queue(a["queue"], exclusive=True)
    done = asyncio.get_running_loop().create_future()
    ms: list[float] = []
    count = 0

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        data = orjson.loads(msg.body)  # decoded, as a VSM decodes an envelope
        if mode == "latency":
            ms.append((now() - data["t"]) * 1e3)
        count += 1
        if count == n and not done.done():
            done.set_result(now())

    await queue.consume(on_message, no_ack=True)
    print("ready", flush=True)
    last = await asyncio.wait_for(done, float(a["timeout"]))
    emit({"ms": ms, "last": last, "count": count})
    await conn.close()


async def source(a: dict[str, Any]) -> None:
    n, size, gap = int(a["n"]), int(a["size"]), float(a["gap"])
    conn = await aio_pika.connect(a["url"])
    ch = await conn.channel(publisher_confirms=False)
    start = now()
    for i in range(n):
        message = aio_pika.Message(body(size, i))
        await ch.default_exchange.publish(message, a["queue"], mandatory=False)
        if gap:
            await asyncio.sleep(gap)
    emit({"start": start})
    await asyncio.sleep(0.5)  # the last frames leave before the connection closes
    await conn.close()


async def server(a: dict[str, Any]) -> None:
    like_vsmd = bool(a["like_vsmd"])
    conn = await aio_pika.connect(a["url"])
    ch = await conn.channel(publisher_confirms=like_vsmd)
    await ch.set_qos(prefetch_count=64)
    queue = await ch.declare_queue(a["queue"], exclusive=True)
    # A reply as vsmd's to an empty result, or one of the size asked (an MCP answer, say).
    reply = body(int(a["reply_size"]), 0) if a.get("reply_size") else b'{"ok":true,"result":{}}'

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        orjson.loads(msg.body)
        out = aio_pika.Message(reply, correlation_id=msg.correlation_id)
        # Not mandatory, as vsmd's replies: the broker returns mandatory direct reply-to.
        await ch.default_exchange.publish(out, msg.reply_to or "", mandatory=False)
        if like_vsmd:
            await msg.ack()

    await queue.consume(on_message, no_ack=not like_vsmd)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await conn.close()


async def client(a: dict[str, Any]) -> None:
    n, size, like_vsmd = int(a["n"]), int(a["size"]), bool(a["like_vsmd"])
    conn = await aio_pika.connect(a["url"])
    ch = await conn.channel(publisher_confirms=like_vsmd)
    replies = await ch.get_queue(REPLY_TO, ensure=False)
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        orjson.loads(msg.body)
        fut = waiting.pop(msg.correlation_id or "", None)
        if fut is not None:
            fut.set_result(None)

    await replies.consume(on_reply, no_ack=True)
    ms: list[float] = []
    for i in range(n + 5):  # five to warm up
        corr = str(i)
        fut = waiting[corr] = loop.create_future()
        t = time.perf_counter()
        message = aio_pika.Message(body(size, i), reply_to=REPLY_TO, correlation_id=corr)
        await ch.default_exchange.publish(message, a["queue"], mandatory=like_vsmd)
        await fut
        if i >= 5:
            ms.append((time.perf_counter() - t) * 1e3)
    emit({"ms": ms})
    await conn.close()


ROLES = {"sink": sink, "source": source, "server": server, "client": client}

if __name__ == "__main__":
    asyncio.run(ROLES[sys.argv[1]](orjson.loads(sys.argv[2])))
