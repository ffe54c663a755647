"""The fork server's standby: forked ahead of the next spawn, handed the spec of the VSM it
becomes. The fork server's decisions on fake OS calls; the spec pipe between real processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.unit.fakes import FakeOs
from tests.unit.test_forkserver import received, spawn_msg
from tests.unit.test_forkserver import spec as make_spec
from vsmd.agents import AgentRegistry
from vsmd.supervisor import standby
from vsmd.supervisor.forkserver import ForkServer
from vsmd.supervisor.standby import Settings, Standby
from vsmd.vsm.credentials import amqp_url

STANDBY_PID = 5151
# What the test's spawns ask for: no gc.freeze (the server's is off), no merging, connected
# ahead to the spec's broker on its event loop.
SETTINGS = Settings(False, False, amqp_url(make_spec()), make_spec().event_loop)


@pytest.fixture
def server(socks: tuple[socket.socket, socket.socket], fake_os: FakeOs) -> Iterator[ForkServer]:
    fs = ForkServer(socks[0], AgentRegistry(), fake_os)
    fs.freeze = False  # keep gc.freeze() out of the test process
    fs.warm = True  # no warm-up: it would try to reach the spec's broker
    yield fs
    fs.drop_standby()
    os.close(fs._wake_r)
    os.close(fs._wake_w)


def want(vsm_id: str, **extra: Any) -> dict[str, Any]:
    return {**spawn_msg(vsm_id), "standby": True, **extra}


class Held:
    """A standby whose spec pipe this test reads, in place of a forked child."""

    def __init__(self, settings: Settings) -> None:
        self.spec_r, spec_w = os.pipe()
        out_r, self.out_w = os.pipe()
        self.standby = Standby(STANDBY_PID, spec_w, out_r, settings)

    def spec(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(standby.receive(self.spec_r))
        return data

    def close(self) -> None:
        for fd in (self.spec_r, self.out_w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held(SETTINGS)
    yield h
    h.close()


def test_a_spawn_that_asks_for_a_standby_gets_one_forked_when_idle(
    server: ForkServer, fake_os: FakeOs
) -> None:
    fake_os.fork_results = [100, STANDBY_PID]
    server.spawn(want("a"))
    assert server.standby is None and server.standby_due  # not forked within the spawn
    server.refill()
    assert server.standby is not None and server.standby.pid == STANDBY_PID
    assert server.standby.settings == SETTINGS
    assert not server.standby_due
    server.refill()  # one at a time
    assert fake_os.fork_results == []


@pytest.mark.parametrize(
    "msg", [spawn_msg("a"), want("a", standby=False), want("a", strategy="exec")]
)
def test_no_standby_unless_asked_for_with_the_fork_server_strategy(
    server: ForkServer, fake_os: FakeOs, msg: dict[str, Any]
) -> None:
    fake_os.fork_results = [100]
    server.spawn(msg)
    assert not server.standby_due
    server.refill()
    assert server.standby is None


def test_a_spawn_hands_the_standby_its_spec_instead_of_forking(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket, held: Held
) -> None:
    server.standby = held.standby
    server.spawn(want("b"))  # no fork result queued: a fork would fail the test
    assert held.spec()["vsm_id"] == "b"
    raw, fds, _flags, _addr = socket.recv_fds(daemon_end, 1 << 20, 4)
    assert orjson.loads(raw) == {
        "ev": "spawned",
        "vsm_id": "b",
        "pid": STANDBY_PID,
        "path": "alpha",
    }
    assert server.children == {STANDBY_PID: "b"}
    assert server.standby is None and server.standby_due  # the next one, when idle
    # The daemon got the standby's output pipe: what the VSM prints reaches it.
    [out] = fds
    try:
        os.write(held.out_w, b"hello\n")
        assert os.read(out, 16) == b"hello\n"
    finally:
        os.close(out)


def test_a_standby_made_under_other_settings_is_killed_and_the_vsm_forked(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket, held: Held
) -> None:
    server.freeze = True
    server.standby = held.standby  # made without gc.freeze; this spawn wants it
    fake_os.fork_results = [100]
    server.spawn(want("c"))
    assert fake_os.kill_calls == [(STANDBY_PID, signal.SIGKILL)]
    assert standby.receive(held.spec_r) == b""  # it was sent no spec
    assert [m["pid"] for m in received(daemon_end)] == [100]
    assert server.children == {100: "c"}


def test_a_standby_that_died_unread_is_replaced_by_a_fork(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket, held: Held
) -> None:
    os.close(held.spec_r)  # nobody reads: the write fails with EPIPE
    server.standby = held.standby
    fake_os.fork_results = [100]
    server.spawn(want("d"))
    assert fake_os.kill_calls == [(STANDBY_PID, signal.SIGKILL)]
    assert [m["pid"] for m in received(daemon_end)] == [100]
    assert server.children == {100: "d"}


def test_a_standby_reaped_before_use_is_forgotten_and_forked_again(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [100, STANDBY_PID, STANDBY_PID + 1]
    server.spawn(want("a"))
    server.refill()
    received(daemon_end)
    fake_os.waitpid_results = [(STANDBY_PID, signal.SIGKILL)]
    server.reap()
    assert received(daemon_end) == []  # not a VSM: nothing to report
    assert fake_os.kill_calls == []  # its pid is free again: no signal may go to it
    assert server.standby is None and server.standby_due
    server.refill()
    assert server.standby is not None and server.standby.pid == STANDBY_PID + 1


def test_a_failed_standby_fork_waits_for_the_next_spawn(
    server: ForkServer, fake_os: FakeOs, caplog: pytest.LogCaptureFixture
) -> None:
    fake_os.fork_results = [100, OSError(11, "again"), 101]
    server.spawn(want("a"))
    server.refill()
    assert server.standby is None and not server.standby_due  # no retry on every loop turn
    assert "no standby forked" in caplog.text
    server.spawn(want("b"))
    assert server.standby_due


def test_shutdown_kills_the_standby(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [100, STANDBY_PID]
    server.spawn(want("a"))
    server.refill()
    server.kill_all()
    assert (STANDBY_PID, signal.SIGKILL) in fake_os.kill_calls
    assert server.standby is None and not server.standby_due


# --- the spec pipe between two real processes -------------------------------------------


def test_a_spec_larger_than_the_pipe_reaches_a_real_child_whole() -> None:
    spec = orjson.dumps({"state": "x" * (1 << 20)})  # 16 times a pipe's buffer
    spec_r, spec_w = os.pipe()
    back_r, back_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the standby's side
        code = 1
        try:
            os.close(spec_w)
            got = standby.receive(spec_r)
            os.write(back_w, hashlib.sha256(got).hexdigest().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(spec_r)
    os.close(back_w)
    sb = Standby(pid, spec_w, -1, SETTINGS)
    try:
        assert sb.hand_over(spec)
        assert os.read(back_r, 64).decode() == hashlib.sha256(spec).hexdigest()
    finally:
        os.close(back_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_standby_that_does_not_read_is_given_up_after_the_timeout() -> None:
    spec_r, spec_w = os.pipe()  # kept open and never read: a stopped standby
    sb = Standby(STANDBY_PID, spec_w, -1, SETTINGS)
    try:
        assert not sb.hand_over(b"x" * (1 << 20), timeout=0.2)
        assert sb.spec_w == -1  # closed either way
    finally:
        os.close(spec_r)


def test_in_secure_mode_a_standby_does_not_connect_ahead(
    server: ForkServer, fake_os: FakeOs
) -> None:
    # A VSM there connects with a token of its own, which no standby has before it is that VSM.
    secure = dataclasses.replace(make_spec("a"), token_socket="\0vsmd-tokens")
    fake_os.fork_results = [100, STANDBY_PID]
    server.spawn({**want("a"), "spec": secure.to_dict()})
    server.refill()
    assert server.standby is not None
    assert server.standby.settings.url is None
    assert SETTINGS.url is not None  # and in cooperative mode it does


def test_the_spec_reaches_a_standby_waiting_on_its_loop() -> None:
    spec_r, spec_w = os.pipe()
    data = b"y" * (300 * 1024)

    async def main() -> bytes:
        waiting = asyncio.ensure_future(standby.receive_here(spec_r))
        await asyncio.sleep(0)  # it waits for the pipe, the loop stays free meanwhile
        sb = Standby(STANDBY_PID, spec_w, -1, SETTINGS)
        # A thread writes, as the fork server would from its own process.
        assert await asyncio.to_thread(sb.hand_over, data)
        return await waiting

    assert asyncio.run(main()) == data
