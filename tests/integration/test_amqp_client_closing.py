"""vsmd's own AMQP client (vsmd/amqp/) when things end: the handshake refused or never
answered, the broker closing a channel (a locked queue, a consumer's queue deleted) or the
connection (rabbitmqctl, on this test's own connection only), the socket lost under the client,
close callbacks; and a connection kept alive: update-secret, heartbeats. Helpers and fixtures:
test_amqp_client.py."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from pamqp import commands as spec
from yarl import URL

from tests.integration.test_amqp_client import (
    LOOPS,
    WAIT,
    Names,
    Run,
    connected,
    names_on,
    runner_on,
    until,
)
from vsmd import amqp
from vsmd.errors import BrokerError

HEARTBEAT_FRAME = 8  # bytes
W = TypeVar("W")


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    return runner_on(request.param)


@pytest.fixture
def names(broker_url: str) -> Iterator[Names]:
    yield from names_on(broker_url)


def recording(
    callbacks: list[Callable[[W, amqp.AmqpError], None]],
) -> list[tuple[W, amqp.AmqpError]]:
    """What the close callbacks of a channel or connection are called with, as they are."""
    calls: list[tuple[W, amqp.AmqpError]] = []
    callbacks.append(lambda what, error: calls.append((what, error)))
    return calls


def listed(name: str) -> tuple[str, int, int] | None:
    """The broker's pid, heartbeat timeout and bytes received of the connection named ``name``
    (``connect(name=)``), None while it does not list it."""
    columns = ["pid", "timeout", "recv_oct", "client_properties"]
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", *columns],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for line in out.splitlines():
        if f'{{"connection_name","{name}"}}' in line:
            pid, timeout, received = line.split("\t")[:3]
            return pid, int(timeout), int(received)
    return None


async def listed_soon(name: str) -> tuple[str, int, int]:
    end = time.monotonic() + WAIT
    while (found := await asyncio.to_thread(listed, name)) is None:
        assert time.monotonic() < end, f"the broker does not list connection {name}"
    return found


def test_a_wrong_password_is_refused(run: Run, broker_url: str) -> None:
    url = str(URL(broker_url).with_password("not-the-password"))

    async def main() -> amqp.AuthRefused:
        with pytest.raises(amqp.AuthRefused) as info:
            await amqp.connect(url, timeout=WAIT)
        return info.value

    refused = run(main())
    assert isinstance(refused, amqp.ConnectionLost) and isinstance(refused, BrokerError)
    assert refused.reply_code == 403


def test_a_port_nobody_listens_on_fails_at_once(run: Run) -> None:
    async def main() -> float:
        start = time.monotonic()
        with pytest.raises(amqp.ConnectionLost, match="cannot reach"):
            await amqp.connect("amqp://guest:guest@127.0.0.1:1/", timeout=WAIT)
        return time.monotonic() - start

    assert run(main()) < 2.0


def test_a_peer_that_never_answers_times_out(run: Run) -> None:
    """A socket that accepts and says nothing: connect gives up after its own timeout."""

    async def main() -> float:
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            start = time.monotonic()
            with pytest.raises(amqp.ConnectionLost, match=r"within 0\.3 s"):
                await amqp.connect(f"amqp://guest:guest@127.0.0.1:{port}/", timeout=0.3)
            return time.monotonic() - start
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    # uvloop's clock counts whole milliseconds: its timeout may end a fraction of one early.
    assert 0.29 <= run(main()) < 2.0


@pytest.mark.parametrize(
    ("in_url", "vhost"),
    [
        ("no-such", "no-such"),
        ("per%2541cent", "per%41cent"),  # decoded once: "%41" is the name's own
    ],
)
def test_an_unknown_vhost_is_refused_by_its_name(
    run: Run, names: Names, in_url: str, vhost: str
) -> None:
    """530 NOT_ALLOWED at the handshake: ConnectionLost, not AuthRefused; the broker names the
    vhost it was asked for, which is the URL's path decoded once."""
    url = f"{URL(names.url).with_path('/')}{names.ns}.{in_url}"

    async def main() -> amqp.ConnectionLost:
        with pytest.raises(amqp.ConnectionLost) as info:
            await amqp.connect(url, timeout=WAIT)
        return info.value

    refused = run(main())
    assert not isinstance(refused, amqp.AuthRefused) and refused.reply_code == 530
    assert f"vhost {names.ns}.{vhost} not found" in str(refused)


def test_a_locked_queue_closes_the_channel_not_the_connection(run: Run, names: Names) -> None:
    queue = names.queue("locked")

    async def main() -> None:
        async with connected(names.url) as holder, connected(names.url) as conn:
            await (await holder.channel()).queue_declare(queue, exclusive=True)
            ch = await conn.channel()
            calls = recording(ch.close_callbacks)
            with pytest.raises(amqp.ChannelClosed) as info:
                await ch.queue_declare(queue, exclusive=True)
            error = info.value
            assert error.reply_code == 405 and ch.error is error and not ch.is_open
            assert calls == [(ch, error)]
            with pytest.raises(amqp.ChannelClosed):
                await ch.queue_bind(queue, "amq.topic", "k")
            with pytest.raises(amqp.ChannelClosed):
                ch.publish_nowait(b"", "", queue)
            with pytest.raises(amqp.ChannelClosed):
                ch.ack(1)
            await ch.close()  # does nothing now
            assert calls == [(ch, error)]
            assert conn.is_open and ch.number not in conn.channels
            again = await conn.channel()
            await again.queue_declare(names.queue("after"), exclusive=True)

    run(main())


def test_deleting_a_consumed_queue_closes_the_consuming_channel(run: Run, names: Names) -> None:
    """The broker's basic.cancel: the channel closes (close callbacks, once), at the broker too
    (its number is free once the close-ok is in), and the connection goes on."""
    queue = names.queue("deleted")

    async def main() -> None:
        async with connected(names.url) as owner, connected(names.url) as conn:
            och = await owner.channel()
            await och.queue_declare(queue)
            ch = await conn.channel()
            calls = recording(ch.close_callbacks)
            await ch.consume(queue, lambda _m: None)
            await och.rpc(spec.Queue.Delete(queue=queue), spec.Queue.DeleteOk)
            await until(lambda: calls)
            assert len(calls) == 1 and calls[0][0] is ch
            assert isinstance(calls[0][1], amqp.ChannelClosed) and not ch.is_open
            with pytest.raises(amqp.ChannelClosed):
                await ch.consume(queue, lambda _m: None)
            fresh = await conn.channel()  # at once, whether its close-ok came or not
            await fresh.queue_declare(names.queue("fresh"), exclusive=True)
            await until(lambda: conn.channels.get(ch.number) is not ch)  # fresh may have it
            assert conn.is_open and len(calls) == 1
            again = await conn.channel()
            await again.queue_declare(names.queue("again"), exclusive=True)

    run(main())


def test_close_callbacks_fire_once_on_a_clean_close(run: Run, names: Names) -> None:
    async def main() -> None:
        conn = await amqp.connect(names.url, timeout=WAIT)
        ch = await conn.channel()
        conn_calls = recording(conn.close_callbacks)
        ch_calls = recording(ch.close_callbacks)
        await conn.close()
        await conn.close()
        error = conn.error
        assert isinstance(error, amqp.ConnectionLost) and error.reply_code == 200
        assert conn_calls == [(conn, error)] and ch_calls == [(ch, error)]

    run(main())


def test_two_closes_at_once(run: Run, names: Names) -> None:
    async def main() -> tuple[bool, amqp.AmqpError | None]:
        conn = await amqp.connect(names.url, timeout=WAIT)
        first = asyncio.ensure_future(conn.close())
        await asyncio.sleep(0)  # the first close sent its connection.close, awaits close-ok
        await conn.close()
        closed_by_second = conn.closed.done()
        await first
        return closed_by_second, conn.error

    closed_by_second, error = run(main())
    assert isinstance(error, amqp.ConnectionLost) and error.reply_code == 200
    assert closed_by_second


def test_a_lost_connection_fails_what_waits_on_it(run: Run, names: Names) -> None:
    """The socket closed under the client: a pending rpc and an unsettled confirm fail with
    the connection's error; channel and connection close callbacks fire once."""
    queue = names.queue("lost")

    async def main() -> None:
        conn = await amqp.connect(names.url, timeout=WAIT)
        plain, confirming = await conn.channel(), await conn.channel(confirms=True)
        await confirming.queue_declare(queue, exclusive=True)
        conn_calls = recording(conn.close_callbacks)
        ch_calls = recording(plain.close_callbacks)
        passive = spec.Queue.Declare(queue=queue, passive=True)
        pending = asyncio.ensure_future(plain.rpc(passive, spec.Queue.DeclareOk))
        await asyncio.sleep(0)  # one turn of the loop: the rpc waits, no answer can be read yet
        assert len(plain._waiting) == 1
        unsettled = confirming.publish_nowait(b"x", "", queue)
        assert unsettled is not None and conn._transport is not None
        conn._transport.abort()
        await asyncio.wait_for(asyncio.shield(conn.closed), WAIT)
        error = conn.error
        assert isinstance(error, amqp.ConnectionLost) and not conn.is_open
        for fut in (pending, unsettled):
            with pytest.raises(amqp.ConnectionLost) as info:
                await asyncio.wait_for(fut, WAIT)
            assert info.value is error
        assert conn_calls == [(conn, error)] and ch_calls == [(plain, error)]
        assert not confirming.is_open and confirming.error is error
        with pytest.raises(amqp.ConnectionLost):
            plain.publish_nowait(b"", "", queue)
        await conn.close()  # harmless
        assert conn_calls == [(conn, error)]

    run(main())


def test_the_broker_closing_the_connection(run: Run, names: Names) -> None:
    """rabbitmqctl close_connection, on this test's connection (found by its name) alone."""
    name = f"{names.ns}.forced"

    async def main() -> None:
        async with connected(names.url, name=name) as conn:
            ch = await conn.channel()
            conn_calls = recording(conn.close_callbacks)
            ch_calls = recording(ch.close_callbacks)
            pid, _timeout, _received = await listed_soon(name)
            close = ["rabbitmqctl", "close_connection", pid, "closed by a test"]
            await asyncio.to_thread(subprocess.run, close, capture_output=True, check=True)
            await asyncio.wait_for(asyncio.shield(conn.closed), WAIT)
            error = conn.error
            assert isinstance(error, amqp.ConnectionLost)
            assert not isinstance(error, amqp.AuthRefused)
            assert error.reply_code == 320 and "closed by a test" in str(error)
            assert conn_calls == [(conn, error)] and ch_calls == [(ch, error)]

    run(main())


def test_update_secret_on_an_open_connection(run: Run, names: Names) -> None:
    password = URL(names.url).password or "guest"

    async def main() -> None:
        async with connected(names.url) as conn:
            await asyncio.wait_for(conn.update_secret(password, "a test"), WAIT)
            assert conn.is_open
            ch = await conn.channel()
            await ch.queue_declare(names.queue("after-update"), exclusive=True)

    run(main())


def test_heartbeats_keep_an_idle_connection_open(run: Run, names: Names) -> None:
    """heartbeat=2: the broker lists that timeout, then hears the client's heartbeats (and
    nothing else) while the connection idles longer than either side's two missed heartbeats
    (4 s), after which the connection still works."""
    url = str(URL(names.url).update_query(heartbeat=2))
    name = f"{names.ns}.heartbeat"

    async def main() -> None:
        async with connected(url, name=name) as conn:
            _pid, timeout, received = await listed_soon(name)
            assert timeout == 2
            start, end = time.monotonic(), time.monotonic() + 3 * WAIT
            while True:
                found = await asyncio.to_thread(listed, name)
                assert found is not None, "the broker dropped the connection"
                assert time.monotonic() < end, "heartbeats do not reach the broker"
                if found[2] >= received + 5 * HEARTBEAT_FRAME and time.monotonic() - start > 4:
                    break
            assert (found[2] - received) % HEARTBEAT_FRAME == 0  # heartbeats, nothing else
            assert conn.is_open
            await (await conn.channel()).close()

    run(main())
