"""vsmd's own AMQP client (vsmd/amqp/) against the real broker: open and close, request/reply
through direct reply-to, bodies across frame boundaries, publisher confirms and returns,
consumers with acks, nowait set-up. Every test runs on uvloop (what a VSM runs on) and on the
standard loop. The handshake's refusals, the broker closing channels and connections, a lost
connection, update-secret and heartbeats: test_amqp_client_closing.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pika
import pika.exceptions
import pytest
from pamqp import commands as spec

from tests.support.harness import cleanup_namespace, new_namespace
from vsmd import amqp
from vsmd.vsm import loop

T = TypeVar("T")
WAIT = 10.0  # seconds anything may take on a busy broker; polled, never slept
REPLY_TO = "amq.rabbitmq.reply-to"
MIB = 1 << 20
LOOPS = ["uvloop", "asyncio"]


class Run(Protocol):
    def __call__(self, main: Coroutine[Any, Any, T]) -> T: ...


def runner_on(kind: str) -> Run:
    def runner(main: Coroutine[Any, Any, T]) -> T:
        return loop.run(main, kind)

    return runner


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    return runner_on(request.param)


@dataclass
class Names:
    """This test's namespace on the shared broker; every queue and exchange named through it
    is deleted after the test."""

    url: str
    ns: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def queue(self, what: str) -> str:
        self.queues.append(f"{self.ns}.{what}")
        return self.queues[-1]

    def exchange(self, what: str) -> str:
        self.exchanges.append(f"{self.ns}.{what}")
        return self.exchanges[-1]


def names_on(broker_url: str) -> Iterator[Names]:
    made = Names(broker_url, new_namespace())
    try:
        yield made
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        deletes = [(q, "queue_delete") for q in made.queues]
        for name, how in [*deletes, *((x, "exchange_delete") for x in made.exchanges)]:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                getattr(conn.channel(), how)(name)
        conn.close()
        cleanup_namespace(broker_url, made.ns)


@pytest.fixture
def names(broker_url: str) -> Iterator[Names]:
    yield from names_on(broker_url)


@contextlib.asynccontextmanager
async def connected(url: str, **kwargs: Any) -> AsyncIterator[amqp.Connection]:
    conn = await amqp.connect(url, timeout=WAIT, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


async def until(what: Callable[[], object], deadline: float = WAIT) -> None:
    end = time.monotonic() + deadline
    while not what():
        assert time.monotonic() < end, "not there in time"
        await asyncio.sleep(0.01)


def at_least(items: list[Any], n: int) -> Callable[[], bool]:
    return lambda: len(items) >= n


async def ready(ch: amqp.Channel, queue: str) -> int:
    """The messages ``queue`` holds ready for delivery (not those delivered, unacked)."""
    ok = await ch.rpc(spec.Queue.Declare(queue=queue, passive=True), spec.Queue.DeclareOk)
    return int(ok.message_count)


def test_connect_open_a_channel_and_close(run: Run, names: Names) -> None:
    async def main() -> None:
        conn = await amqp.connect(names.url, timeout=WAIT)
        assert conn.is_open and not conn.closed.done()
        ch = await conn.channel()
        assert ch.is_open and conn.channels[ch.number] is ch
        await ch.close()
        assert not ch.is_open and ch.number not in conn.channels
        await ch.close()  # a second close does nothing
        with pytest.raises(amqp.ChannelClosed):
            await ch.queue_declare(names.queue("never"))
        await conn.close()
        assert conn.closed.done() and not conn.is_open
        assert isinstance(conn.error, amqp.ConnectionLost) and conn.error.reply_code == 200
        await conn.close()
        with pytest.raises(amqp.ConnectionLost):
            await conn.channel()

    run(main())


def test_request_and_reply_through_direct_reply_to(run: Run, names: Names) -> None:
    queue = names.queue("requests")
    headers: dict[str, Any] = {
        "n": 1,
        "big": 2**40,
        "s": "text",
        "yes": True,
        "none": None,
        "half": 1.5,
    }
    headers["nested"] = {"list": [1, "two", {"deep": False}], "neg": -5}
    props = amqp.Properties(
        correlation_id="req-1", reply_to=REPLY_TO, headers=headers, content_type="application/json"
    )

    async def main() -> tuple[amqp.Message, amqp.Message]:
        async with connected(names.url) as server, connected(names.url) as client:
            srv = await server.channel()
            await srv.queue_declare(queue)
            seen: list[amqp.Message] = []

            def serve(msg: amqp.Message) -> None:
                seen.append(msg)
                p = msg.properties
                back = amqp.Properties(
                    correlation_id=p.correlation_id, headers=p.headers, content_type=p.content_type
                )
                srv.publish_nowait(b"re:" + msg.body, "", p.reply_to or "", back)

            await srv.consume(queue, serve, no_ack=True)
            cli = await client.channel()
            reply: asyncio.Future[amqp.Message] = asyncio.get_running_loop().create_future()
            await cli.consume(REPLY_TO, reply.set_result, no_ack=True)
            await cli.publish(b'{"q": 1}', "", queue, props)
            answer = await asyncio.wait_for(reply, WAIT)
            return seen[0], answer

    request, reply = run(main())
    assert (request.body, request.exchange, request.routing_key) == (b'{"q": 1}', "", queue)
    assert (request.properties.reply_to or "").startswith(REPLY_TO + ".")
    for got in (request, reply):
        assert got.properties.correlation_id == "req-1"
        assert got.properties.headers == headers
        assert got.properties.content_type == "application/json"
    assert reply.body == b're:{"q": 1}' and reply.routing_key == request.properties.reply_to


def test_bodies_of_any_size_arrive_intact(run: Run, names: Names) -> None:
    queue = names.queue("bodies")

    async def main() -> tuple[list[bytes], list[bytes]]:
        async with connected(names.url) as conn:
            room = conn.frame_max - 8  # a body frame's payload
            assert 3 * room < MIB  # so 1 MiB goes in several body frames
            sizes = [0, 1, room - 1, room, room + 1, MIB, 0]
            bodies = [os.urandom(n) for n in sizes]
            ch = await conn.channel()
            await ch.queue_declare(queue)
            got: list[amqp.Message] = []
            await ch.consume(queue, got.append, no_ack=True)
            for body in bodies:
                await ch.publish(body, "", queue, amqp.Properties(content_type="x/bytes"))
            await until(at_least(got, len(bodies)))
            return bodies, [m.body for m in got]

    sent, received = run(main())
    assert [len(b) for b in received] == [len(b) for b in sent]
    assert received == sent


def test_confirmed_publishes_settle_each_as_the_broker_decided(run: Run, names: Names) -> None:
    queue, nowhere = names.queue("confirmed"), f"{names.ns}.nowhere"

    async def main() -> tuple[list[BaseException | None], int]:
        async with connected(names.url) as conn:
            ch = await conn.channel(confirms=True)
            assert ch.confirming
            await ch.queue_declare(queue)
            await ch.publish(b"one", "", queue, mandatory=True)
            with pytest.raises(amqp.PublishRefused) as info:
                await asyncio.wait_for(ch.publish(b"lost", "", nowhere, mandatory=True), WAIT)
            assert info.value.returned and info.value.routing_key == nowhere
            await ch.publish(b"dropped", "", nowhere)  # not mandatory: confirmed all the same
            futures = []
            for i in range(500):
                key = queue if i % 3 else f"{nowhere}.{i % 2}"
                fut = ch.publish_nowait(str(i).encode(), "", key, mandatory=True)
                assert fut is not None
                futures.append(fut)
            settled = asyncio.gather(*futures, return_exceptions=True)
            results = await asyncio.wait_for(settled, WAIT)
            return results, await ready(ch, queue)

    results, held = run(main())
    for i, result in enumerate(results):
        if i % 3:
            assert result is None, (i, result)
        else:
            assert isinstance(result, amqp.PublishRefused), (i, result)
            assert result.returned and result.routing_key == f"{nowhere}.{i % 2}"
    assert held == 1 + sum(1 for i in range(500) if i % 3)


def test_an_unconfirmed_channel_hands_returns_to_on_return(run: Run, names: Names) -> None:
    nowhere = f"{names.ns}.nowhere"

    async def main() -> list[amqp.Message]:
        async with connected(names.url) as conn:
            ch = await conn.channel()
            returned: list[amqp.Message] = []
            ch.on_return = returned.append
            await ch.publish(b"quiet", "", nowhere)  # not mandatory: dropped without a word
            props = amqp.Properties(correlation_id="r1")
            await ch.publish(b"back", "", nowhere, props, mandatory=True)
            await until(lambda: returned)
            return returned

    [msg] = run(main())
    assert (msg.body, msg.exchange, msg.routing_key) == (b"back", "", nowhere)
    assert msg.properties.correlation_id == "r1" and msg.delivery_tag is None


def test_prefetch_holds_back_what_is_not_acked(run: Run, names: Names) -> None:
    queue = names.queue("prefetch")

    async def main() -> None:
        async with connected(names.url) as conn:
            ch = await conn.channel(prefetch=1)
            other = await conn.channel()
            await ch.queue_declare(queue)
            for i in range(3):
                await ch.publish(bytes([i]), "", queue)
            got: list[amqp.Message] = []
            await ch.consume(queue, got.append)
            for n in (1, 2, 3):
                await until(at_least(got, n))
                # A round trip later the rest still waits on the broker, undelivered.
                assert await ready(other, queue) == 3 - n and len(got) == n
                got[-1].ack()
            assert [m.body for m in got] == [b"\x00", b"\x01", b"\x02"]

    run(main())


def test_acks_nacks_and_redelivery(run: Run, names: Names) -> None:
    """Acked: gone; nacked without requeue: gone; neither: redelivered once its channel
    closes."""
    queue = names.queue("acks")

    async def main() -> None:
        async with connected(names.url) as conn:
            ch = await conn.channel()
            await ch.queue_declare(queue)
            for body in (b"ack", b"drop", b"keep"):
                await ch.publish(body, "", queue)
            got: list[amqp.Message] = []
            await ch.consume(queue, got.append)
            await until(lambda: len(got) == 3)
            assert [(m.body, m.redelivered) for m in got] == [
                (b"ack", False),
                (b"drop", False),
                (b"keep", False),
            ]
            got[0].ack()
            got[1].nack(requeue=False)
            await ch.close()
            ch2 = await conn.channel()
            assert await ready(ch2, queue) == 1
            again: list[amqp.Message] = []
            await ch2.consume(queue, again.append)
            await until(lambda: again)
            assert (again[0].body, again[0].redelivered) == (b"keep", True)
            again[0].ack()
            await ch2.close()  # an unacked message would be back on the queue now
            assert await ready(await conn.channel(), queue) == 0

    run(main())


def test_nowait_set_up_then_a_confirmed_publish(run: Run, names: Names) -> None:
    exchange, queue = names.exchange("topic"), names.queue("nowait")

    async def main() -> list[amqp.Message]:
        async with connected(names.url) as conn:
            ch = await conn.channel(confirms=True)
            declare = spec.Exchange.Declare(exchange=exchange, exchange_type="topic")
            await ch.rpc(declare, spec.Exchange.DeclareOk)
            await ch.queue_declare(queue, nowait=True)
            await ch.queue_bind(queue, exchange, "a.*", nowait=True)
            got: list[amqp.Message] = []
            await ch.consume(queue, got.append, no_ack=True, nowait=True)
            # The same channel: the broker took the set-up before the publish, which it routes.
            await asyncio.wait_for(ch.publish(b"hi", exchange, "a.b", mandatory=True), WAIT)
            with pytest.raises(amqp.PublishRefused):
                await asyncio.wait_for(ch.publish(b"no", exchange, "b.a", mandatory=True), WAIT)
            await until(lambda: got)
            assert ch.is_open
            return got

    [msg] = run(main())
    assert (msg.body, msg.exchange, msg.routing_key) == (b"hi", exchange, "a.b")
