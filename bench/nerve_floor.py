"""The floor of the nervous-system figures: the VSM's own AMQP client (vsmd/amqp/) bare, with no
runtime around it, one process per side, each on uvloop as a VSM is.

``python -m bench.nerve_floor ROLE JSON``. Roles: ``sink`` and ``source`` (a publisher and a
consumer: one message at a time for latency, as fast as they go for rate) and ``server`` and
``client`` (request/reply with direct reply-to), and ``fanout`` (one process forks N receivers,
each with its own connection and an inbox bound to a topic exchange, then broadcasts to them).
A receiving side prints ``ready`` once it consumes; every side prints one JSON line with its
result. Times are ``CLOCK_MONOTONIC``, one
clock for every process of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

import orjson
import uvloop
from pamqp import commands as spec

from bench.schedstat import task_seconds
from vsmd import amqp

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
    conn = await amqp.connect(a["url"])
    ch = await conn.channel(prefetch=64)
    await ch.queue_declare(a["queue"], exclusive=True)
    done = asyncio.get_running_loop().create_future()
    ms: list[float] = []
    count = 0

    def on_message(msg: amqp.Message) -> None:
        nonlocal count
        data = orjson.loads(msg.body)  # decoded, as a VSM decodes an envelope
        if mode == "latency":
            ms.append((now() - data["t"]) * 1e3)
        count += 1
        if count == n and not done.done():
            done.set_result(now())

    await ch.consume(a["queue"], on_message, no_ack=True)
    print("ready", flush=True)
    last = await asyncio.wait_for(done, float(a["timeout"]))
    emit({"ms": ms, "last": last, "count": count})
    await conn.close()


async def source(a: dict[str, Any]) -> None:
    n, size, gap = int(a["n"]), int(a["size"]), float(a["gap"])
    conn = await amqp.connect(a["url"])
    ch = await conn.channel()
    start = now()
    for i in range(n):
        await ch.publish(body(size, i), "", a["queue"])
        if gap:
            await asyncio.sleep(gap)
    emit({"start": start})
    await asyncio.sleep(0.5)  # the last frames leave before the connection closes
    await conn.close()


async def server(a: dict[str, Any]) -> None:
    """Answers requests. ``like_vsmd``: as a VSM's channels do it (vsmd/vsm/bus.py, calls.py):
    the inbox on a confirming channel with a prefetch, each request acked once answered, the
    reply on a second channel without confirms. Otherwise one channel, no acks."""
    like_vsmd = bool(a["like_vsmd"])
    conn = await amqp.connect(a["url"])
    ch = await conn.channel(confirms=like_vsmd, prefetch=64)
    out = await conn.channel() if like_vsmd else ch
    await ch.queue_declare(a["queue"], exclusive=True)
    # A reply as vsmd's to an empty result, or one of the size asked (an MCP answer, say).
    reply = body(int(a["reply_size"]), 0) if a.get("reply_size") else b'{"ok":true,"result":{}}'

    def on_message(msg: amqp.Message) -> None:
        orjson.loads(msg.body)
        props = amqp.Properties(correlation_id=msg.properties.correlation_id)
        # Not mandatory, as vsmd's replies: the broker returns mandatory direct reply-to.
        out.publish_nowait(reply, "", msg.properties.reply_to or "", props)
        if like_vsmd:
            msg.ack()

    await ch.consume(a["queue"], on_message, no_ack=not like_vsmd)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await conn.close()


async def client(a: dict[str, Any]) -> None:
    """Requests one at a time. ``like_vsmd``: mandatory, as a VSM's requests are, on a channel
    without confirms (a request's reply tells that it arrived)."""
    n, size, like_vsmd = int(a["n"]), int(a["size"]), bool(a["like_vsmd"])
    conn = await amqp.connect(a["url"])
    ch = await conn.channel()
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[None]] = {}

    def on_reply(msg: amqp.Message) -> None:
        orjson.loads(msg.body)
        fut = waiting.pop(msg.properties.correlation_id or "", None)
        if fut is not None:
            fut.set_result(None)

    await ch.consume(REPLY_TO, on_reply, no_ack=True)
    ms: list[float] = []
    for i in range(n + 5):  # five to warm up
        corr = str(i)
        fut = waiting[corr] = loop.create_future()
        t = time.perf_counter()
        props = amqp.Properties(reply_to=REPLY_TO, correlation_id=corr)
        await ch.publish(body(size, i), "", a["queue"], props, mandatory=like_vsmd)
        await fut
        if i >= 5:
            ms.append((time.perf_counter() - t) * 1e3)
    emit({"ms": ms})
    await conn.close()


async def _receiver(a: dict[str, Any], index: int) -> None:
    """What a VSM does with a broadcast: its own connection and inbox, decode, note, ack."""
    conn = await amqp.connect(a["url"])
    ch = await conn.channel(prefetch=64)
    queue = f"{a['exchange']}.{index}"
    await ch.queue_declare(queue, exclusive=True)
    await ch.queue_bind(queue, a["exchange"], "all")
    arrivals: dict[str, float] = {}
    done = asyncio.Event()

    def on_message(msg: amqp.Message) -> None:
        t = now()  # first: nothing before the time taken
        data = orjson.loads(msg.body)
        if "report" in data:
            ch.publish_nowait(orjson.dumps(arrivals), "", a["collect"])
            done.set()
        else:
            arrivals[str(data["round"])] = t
        msg.ack()  # acked once handled, as a VSM's inbox is

    await ch.consume(queue, on_message)
    await ch.publish(b"ready", "", a["collect"])
    await done.wait()
    await conn.close()


def _receive(a: dict[str, Any], index: int) -> None:
    code = 1
    try:
        uvloop.run(_receiver(a, index))
        code = 0
    finally:
        os._exit(code)  # a forked child never returns into its parent's code


async def _declare(a: dict[str, Any], delete: bool) -> None:
    conn = await amqp.connect(a["url"])
    ch = await conn.channel()
    if delete:
        await ch.rpc(spec.Queue.Delete(queue=a["collect"]), spec.Queue.DeleteOk)
        await ch.rpc(spec.Exchange.Delete(exchange=a["exchange"]), spec.Exchange.DeleteOk)
    else:
        topic = spec.Exchange.Declare(exchange=a["exchange"], exchange_type="topic")
        await ch.rpc(topic, spec.Exchange.DeclareOk)
        await ch.queue_declare(a["collect"])
    await conn.close()


def _cpu(pids: list[int | None]) -> float:
    # Not bench.resources.cpu_of: it brings psutil and the rest of vsmd into the process that
    # forks the receivers, which would then share more pages than a bare client's parent does.
    return sum(task_seconds(pid) or 0.0 for pid in pids if pid is not None)


async def _broadcast(a: dict[str, Any], receivers: list[int]) -> dict[str, Any]:
    n = len(receivers)
    rounds, gap, timeout = int(a["rounds"]), float(a["gap"]), float(a["timeout"])
    conn = await amqp.connect(a["url"])
    ch = await conn.channel()
    inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(msg: amqp.Message) -> None:
        inbox.put_nowait(msg.body)

    await ch.consume(a["collect"], on_message, no_ack=True)
    for _ in range(n):
        await asyncio.wait_for(inbox.get(), timeout)  # every receiver consumes
    # The CPU of the rounds, as vsmd's step takes it around the root's rounds; first what the
    # same processes use with nothing to do, which the rounds' figures hold too.
    watch: dict[str, list[int | None]] = {"receivers": [*receivers], **a["watch"]}
    before = {k: _cpu(v) for k, v in watch.items()}
    started = time.perf_counter()
    await asyncio.sleep(float(a["idle_s"]))
    idle_s = time.perf_counter() - started
    idle = {k: (_cpu(v) - before[k]) / idle_s for k, v in watch.items()}
    before = {k: _cpu(v) for k, v in watch.items()}
    started = time.perf_counter()
    sent = []
    for r in range(rounds):
        sent.append(now())
        await ch.publish(orjson.dumps({"round": r}), a["exchange"], "all")
        await asyncio.sleep(gap)  # every receiver is done before the next round
    cpu = {k: _cpu(v) - before[k] for k, v in watch.items()}
    window_s = time.perf_counter() - started
    await ch.publish(b'{"report":true}', a["exchange"], "all")
    reports = [orjson.loads(await asyncio.wait_for(inbox.get(), timeout)) for _ in range(n)]
    await conn.close()
    every, last = [], []
    for r, t0 in enumerate(sent):
        arrived = [(rep[str(r)] - t0) * 1e3 for rep in reports if str(r) in rep]
        if len(arrived) == n:  # a round someone missed has no "until all"
            last.append(max(arrived))
        every.extend(arrived)
    return {
        "all_ms": last,
        "each_ms": every,
        "missed": rounds * n - len(every),
        "cpu": cpu,
        "idle": idle,
        "window_s": window_s,
    }


def fanout(a: dict[str, Any]) -> None:
    """Fork the receivers from this pre-imported process (as vsmd's fork server forks VSMs),
    then broadcast to them from a connection of its own."""
    n = int(a["n"])
    uvloop.run(_declare(a, delete=False))
    pids: list[int] = []
    try:
        for index in range(n):
            pid = os.fork()
            if pid == 0:
                _receive(a, index)
            pids.append(pid)
        result = uvloop.run(_broadcast(a, pids))
        for pid in pids:
            os.waitpid(pid, 0)
        pids.clear()
        emit(result)
    finally:
        for pid in pids:  # a failure above: no receiver outlives the run
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        uvloop.run(_declare(a, delete=True))


ROLES = {"sink": sink, "source": source, "server": server, "client": client}

if __name__ == "__main__":
    if sys.argv[1] == "fanout":
        fanout(orjson.loads(sys.argv[2]))
    else:
        uvloop.run(ROLES[sys.argv[1]](orjson.loads(sys.argv[2])))
