"""The fork server on fake OS calls, heard through a real SOCK_SEQPACKET pair."""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.unit.fakes import FakeOs
from vsmd.agents import AgentRegistry
from vsmd.spec import VsmSpec
from vsmd.supervisor import forkserver, oscalls
from vsmd.supervisor.forkserver import DEATH_GRACE, DEATH_SIGNAL, ForkServer
from vsmd.supervisor.oscalls import EXIT_PARENT_GONE, die_with_parent

PID = 4242


@pytest.fixture
def server(socks: tuple[socket.socket, socket.socket], fake_os: FakeOs) -> Iterator[ForkServer]:
    fs = ForkServer(socks[0], AgentRegistry(), fake_os)
    fs.freeze = False  # keep gc.freeze() out of the test process
    yield fs
    os.close(fs._wake_r)
    os.close(fs._wake_w)


def received(sock: socket.socket) -> list[dict[str, Any]]:
    """Every message waiting on the daemon's end, one per packet."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            raw = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        out.append(orjson.loads(raw))


def spec(vsm_id: str = "abc123") -> VsmSpec:
    return VsmSpec(
        vsm_id=vsm_id,
        name="alpha",
        path="alpha",
        parent_id=None,
        depth=1,
        agent="noop",
        broker_url="amqp://x/",
        namespace="vsm",
    )


def spawn_msg(vsm_id: str = "abc123") -> dict[str, Any]:
    return {"op": "spawn", "spec": spec(vsm_id).to_dict(), "strategy": "forkserver"}


def test_fork_eagain_reports_spawn_failed(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [OSError(errno.EAGAIN, "Resource temporarily unavailable")]
    assert server.handle(spawn_msg()) is True
    assert received(daemon_end) == [
        {
            "ev": "spawn_failed",
            "vsm_id": "abc123",
            "error": f"fork failed: {os.strerror(errno.EAGAIN)}",
        }
    ]
    assert server.children == {}


def test_fork_enomem_names_the_error(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [OSError(errno.ENOMEM, "no memory")]
    server.spawn(spawn_msg())
    [msg] = received(daemon_end)
    assert msg["ev"] == "spawn_failed"
    assert msg["error"] == f"fork failed: {os.strerror(errno.ENOMEM)}"


def test_fork_reports_spawned(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [PID]
    assert server.handle(spawn_msg()) is True
    raw, fds, _flags, _addr = socket.recv_fds(daemon_end, 1 << 20, 4)
    assert orjson.loads(raw) == {"ev": "spawned", "vsm_id": "abc123", "pid": PID, "path": "alpha"}
    assert server.children == {PID: "abc123"}
    # With it, the read end of the VSM's stdout and stderr; the fork server keeps no copy.
    [out] = fds
    try:
        assert os.read(out, 1) == b""  # end of file: the only writer was the (fake) child's
    finally:
        os.close(out)


def test_gc_freeze_before_fork_unless_turned_off(
    server: ForkServer, fake_os: FakeOs, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    server.freeze = True
    fake_os.fork_results = [PID, PID + 1]
    server.spawn({**spawn_msg("a"), "gc_freeze": False})
    assert frozen == []
    server.spawn(spawn_msg("b"))
    assert frozen == [True]


def test_memory_merge_marks_the_fork_server_once_when_asked(
    server: ForkServer, fake_os: FakeOs, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks: list[bool] = []
    monkeypatch.setattr(forkserver, "merge_pages", lambda: marks.append(True))
    fake_os.fork_results = [PID, PID + 1, PID + 2]
    server.spawn(spawn_msg("a"))
    assert marks == []
    server.spawn({**spawn_msg("b"), "memory_merge": True})
    server.spawn({**spawn_msg("c"), "memory_merge": True})
    assert marks == [True]  # the mark is inherited by every later fork: once is enough


def test_memory_merge_refused_by_the_kernel_is_logged_and_the_spawn_goes_on(
    server: ForkServer,
    fake_os: FakeOs,
    daemon_end: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse() -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(forkserver, "merge_pages", refuse)
    fake_os.fork_results = [PID]
    server.spawn({**spawn_msg("a"), "memory_merge": True})
    assert [m["ev"] for m in received(daemon_end)] == ["spawned"]
    assert "the kernel refused page merging: Invalid argument" in caplog.text


@pytest.mark.parametrize(
    ("status", "code", "sig"),
    [
        (3 << 8, 3, None),  # exit(3)
        (0, 0, None),  # exit(0)
        (signal.SIGKILL, None, signal.SIGKILL),  # killed by SIGKILL
        (signal.SIGTERM, None, signal.SIGTERM),
        (signal.SIGSEGV | 0x80, None, signal.SIGSEGV),  # with a core dump
    ],
)
def test_reap_reports_exited(
    server: ForkServer,
    fake_os: FakeOs,
    daemon_end: socket.socket,
    status: int,
    code: int | None,
    sig: int | None,
) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    received(daemon_end)
    fake_os.waitpid_results = [(PID, status)]
    server.reap()
    assert received(daemon_end) == [
        {"ev": "exited", "vsm_id": "abc123", "pid": PID, "code": code, "signal": sig}
    ]
    assert server.children == {}
    assert fake_os.waitpid_calls[0] == (-1, os.WNOHANG)


def test_reap_reports_every_exit_in_order(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [100, 200]
    server.spawn(spawn_msg("one"))
    server.spawn(spawn_msg("two"))
    received(daemon_end)
    fake_os.waitpid_results = [(200, 1 << 8), (100, signal.SIGKILL)]
    server.reap()
    assert [(m["vsm_id"], m["code"], m["signal"]) for m in received(daemon_end)] == [
        ("two", 1, None),
        ("one", None, signal.SIGKILL),
    ]


def test_reap_stops_when_nothing_has_exited(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    received(daemon_end)
    fake_os.waitpid_results = [(0, 0), (PID, 0)]
    server.reap()
    assert received(daemon_end) == []
    assert server.children == {PID: "abc123"}
    assert fake_os.waitpid_results == [(PID, 0)]  # it did not keep waiting


def test_reap_of_an_orphan_sends_nothing(
    server: ForkServer, fake_os: FakeOs, daemon_end: socket.socket
) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    received(daemon_end)
    fake_os.waitpid_results = [(9999, 0), (PID, 2 << 8)]
    server.reap()
    msgs = received(daemon_end)
    assert [m["pid"] for m in msgs] == [PID]  # the orphan 9999 was reaped silently
    assert msgs[0]["code"] == 2


def test_reap_with_no_children_at_all(server: ForkServer, daemon_end: socket.socket) -> None:
    server.reap()  # waitpid raises ChildProcessError
    assert received(daemon_end) == []


def test_kill_signals_the_process_group(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    server.kill(PID, signal.SIGTERM)
    assert fake_os.killpg_calls == [(PID, signal.SIGTERM)]
    assert fake_os.kill_calls == []


def test_kill_of_unknown_pid_does_nothing(server: ForkServer, fake_os: FakeOs) -> None:
    server.kill(12345, signal.SIGKILL)
    assert fake_os.killpg_calls == []
    assert fake_os.kill_calls == []


def test_kill_after_reap_does_nothing(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    fake_os.waitpid_results = [(PID, 0)]
    server.reap()
    # Reaping kills what the VSM left in its group (the group id is still reserved then).
    assert fake_os.killpg_calls == [(PID, signal.SIGKILL)]
    server.kill(PID, signal.SIGTERM)  # the pid may belong to someone else by now
    assert fake_os.killpg_calls == [(PID, signal.SIGKILL)]
    assert fake_os.kill_calls == []


def test_kill_falls_back_to_the_pid_without_a_group(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    fake_os.killpg_error = ProcessLookupError(errno.ESRCH, "No such process")
    server.kill(PID, signal.SIGTERM)
    assert fake_os.killpg_calls == [(PID, signal.SIGTERM)]
    assert fake_os.kill_calls == [(PID, signal.SIGTERM)]


def test_kill_of_a_process_that_just_went_is_quiet(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    fake_os.killpg_error = ProcessLookupError(errno.ESRCH, "No such process")
    fake_os.kill_error = ProcessLookupError(errno.ESRCH, "No such process")
    server.kill(PID, signal.SIGKILL)  # must not raise
    assert fake_os.kill_calls == [(PID, signal.SIGKILL)]


def test_handle_kill(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [PID]
    server.spawn(spawn_msg())
    assert server.handle({"op": "kill", "pid": PID, "sig": int(signal.SIGTERM)}) is True
    assert fake_os.killpg_calls == [(PID, signal.SIGTERM)]


def test_kill_all(server: ForkServer, fake_os: FakeOs) -> None:
    fake_os.fork_results = [100, 200]
    server.spawn(spawn_msg("one"))
    server.spawn(spawn_msg("two"))
    server.kill_all()
    assert sorted(fake_os.killpg_calls) == [(100, signal.SIGKILL), (200, signal.SIGKILL)]


def test_handle_shutdown_returns_false(server: ForkServer, fake_os: FakeOs) -> None:
    assert server.handle({"op": "shutdown"}) is False
    assert fake_os.killpg_calls == []


def test_handle_unknown_op_is_ignored(server: ForkServer, daemon_end: socket.socket) -> None:
    assert server.handle({"op": "dance"}) is True
    assert server.handle({}) is True
    assert received(daemon_end) == []


def test_send_to_a_gone_daemon_is_quiet(
    server: ForkServer, socks: tuple[socket.socket, socket.socket]
) -> None:
    socks[1].close()
    server.send({"ev": "hello"})  # must not raise


class Exited(BaseException):
    """What the patched ``os._exit`` raises, so a test sees the code instead of ending."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``os._exit`` records its code and raises Exited; ``prctl`` does nothing."""
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(oscalls, "_prctl", lambda _option, _arg: None)
    return codes


def test_die_with_parent_stays_while_the_parent_is_there(
    exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "getppid", lambda: 500)
    die_with_parent(signal.SIGKILL, 500)
    die_with_parent(signal.SIGKILL)  # no parent to check: the request only
    assert exits == []


def test_die_with_parent_leaves_when_the_parent_went_first(
    exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-parented before the death signal was asked for: it would never come.
    monkeypatch.setattr(os, "getppid", lambda: 1)
    with pytest.raises(Exited):
        die_with_parent(signal.SIGKILL, 500)
    assert exits == [EXIT_PARENT_GONE]


def test_a_vsm_whose_fork_server_died_before_it_set_up_leaves_at_once(
    server: ForkServer, exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[VsmSpec] = []
    monkeypatch.setattr(os, "setsid", lambda: None)
    monkeypatch.setattr(os, "getppid", lambda: server.pid + 1)  # not the fork server any more
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep the test process's handlers
    monkeypatch.setattr(signal, "set_wakeup_fd", lambda *_: -1)

    def fake_run_vsm(s: VsmSpec, _registry: AgentRegistry) -> int:
        ran.append(s)
        return 0

    monkeypatch.setattr(forkserver, "run_vsm", fake_run_vsm)
    redirected: list[int] = []  # and the test process keeps its own stdout and stderr
    monkeypatch.setattr(forkserver, "_redirect_output", redirected.append)
    with pytest.raises(Exited):
        server._child(spec(), "forkserver", 99)
    assert redirected == [99]  # before anything else
    assert (
        exits[0] == EXIT_PARENT_GONE
    )  # then the setup's own exit, as the real _exit never returns
    assert ran == []  # no agent code ran
    assert server.pid == os.getpid()  # captured in the fork server, before any fork


def test_the_daemons_death_signal_kills_every_vsms_group_before_leaving(
    server: ForkServer, fake_os: FakeOs, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: dict[int, Any] = {}
    alarms: list[int] = []
    monkeypatch.setattr(signal, "signal", handlers.__setitem__)  # the test process keeps its own
    monkeypatch.setattr(signal, "set_wakeup_fd", lambda *_: -1)
    monkeypatch.setattr(signal, "alarm", alarms.append)
    fake_os.fork_results = [100, 200]
    server.spawn(spawn_msg("one"))
    server.spawn(spawn_msg("two"))
    # The kernel sends the death signal when the daemon dies, into the loop: here, at once.
    monkeypatch.setattr(server, "_loop", lambda: handlers[DEATH_SIGNAL](DEATH_SIGNAL, None))
    server.serve()
    assert DEATH_SIGNAL not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
    assert server.orphaned
    assert sorted(fake_os.killpg_calls) == [(100, signal.SIGKILL), (200, signal.SIGKILL)]
    assert alarms == [DEATH_GRACE]  # and if the sweep hangs, SIGALRM ends the fork server


def test_the_loop_leaves_once_orphaned(server: ForkServer) -> None:
    server.orphaned = True
    server._loop()  # returns at once instead of waiting on the socket
