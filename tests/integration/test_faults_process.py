"""Process faults with real processes: the fork server's parent check, an agent's helpers under
quotas and after kill -9 of vsmd, a fork server that cannot be restarted."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.harness import cleanup_namespace, poll_for, running_daemon, start_daemon
from vsmctl.client import VsmClient
from vsmd.errors import SpawnError
from vsmd.protocol import Policy, SpawnConfig
from vsmd.spec import MAX_PACKET
from vsmd.supervisor.oscalls import EXIT_PARENT_GONE
from vsmd.supervisor.pool import ForkServerPool


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def fork_server_socket() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        yield ours, theirs


def run_fork_server(theirs: socket.socket, parent: int) -> subprocess.Popen[bytes]:
    """The fork server as the pool starts it, told that ``parent`` is its daemon."""
    return subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "vsmd.supervisor.forkserver",
            str(theirs.fileno()),
            str(parent),
        ],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
    )


def test_a_fork_server_whose_daemon_is_already_gone_exits_at_once(
    fork_server_socket: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = fork_server_socket
    # Our own parent stands for a daemon that died while the fork server was starting: the
    # fork server's parent is not the pid it was given.
    proc = run_fork_server(theirs, os.getppid())
    theirs.close()
    try:
        assert proc.wait(60) == EXIT_PARENT_GONE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ours.settimeout(60)
    assert ours.recv(MAX_PACKET) == b""  # gone without a hello


def test_a_fork_server_whose_daemon_is_there_says_hello(
    fork_server_socket: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = fork_server_socket
    proc = run_fork_server(theirs, os.getpid())
    theirs.close()
    try:
        ours.settimeout(60)
        assert b'"hello"' in ours.recv(MAX_PACKET)
        ours.shutdown(socket.SHUT_RDWR)  # its lifeline: it leaves when we do
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_agents_subprocess_counts_against_its_vsms_memory_quota(
    broker_url: str, tmp_path: Path
) -> None:
    config = {"sample_interval": 0.2, "quota_violations": 2}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="h",
                agent="helperhog",
                settings={"mb": 150},
                policy=Policy(memory_mb=80, quota_action="warn"),
            ),
        )
        assert vsm.pid is not None

        def warned() -> bool:
            return any(e["kind"] == "quota_warn" and e["vsm_id"] == vsm.id for e in c.events()[1])

        poll_for(warned, timeout=60, what="a memory warning for the helper's 150 MiB")
        # The VSM alone is under its quota: only its subprocess can have taken it over.
        assert psutil.Process(vsm.pid).memory_info().rss < 80 * 2**20
        info = c.show(vsm.id)
        assert info.metrics["rss_mb"] > 150
        assert info.last_reason is not None and info.last_reason.startswith("memory quota")


def test_kill_9_of_vsmd_takes_an_agents_subprocess_along(broker_url: str, tmp_path: Path) -> None:
    d = start_daemon(broker_url, tmp_path / "state")
    ids: list[str] = []  # for the clean-up: a killed daemon leaves its queues behind
    helper = 0
    try:
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="h", agent="helper"))
        ids.append(vsm.id)
        helper = c.call(vsm.id, "pids")["helper_pid"]
        assert not gone(helper)
        c.close()
        d.proc.kill()
        d.proc.wait()
        poll_for(lambda: gone(helper), timeout=60, what="the helper to die with vsmd")
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace, tuple(ids))
        if helper and not gone(helper):  # a failed run leaves nothing running
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper, signal.SIGKILL)


class SilentPool(ForkServerPool):
    """Starts a "fork server" that never says hello (hung in its imports, say)."""

    def _command(self, fd: int) -> list[str]:
        return [sys.executable, "-c", "import signal; signal.pause()"]


class DyingPool(ForkServerPool):
    """Starts a "fork server" that exits before its hello."""

    def _command(self, fd: int) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(3)"]


def my_children() -> set[int]:
    return {p.pid for p in psutil.Process().children() if not gone(p.pid)}


def test_a_fork_server_that_never_says_hello_is_killed_after_the_timeout() -> None:
    before = my_children()
    pool = SilentPool(lambda _ev: None, hello_timeout=1.0)
    with pytest.raises(SpawnError) as failed:
        pool.start()
    assert failed.value.message == "the fork server did not say hello within 1 s"
    assert not pool.alive
    assert my_children() <= before  # killed and reaped, not left behind


def test_a_fork_server_that_dies_before_its_hello_fails_the_start() -> None:
    before = my_children()
    pool = DyingPool(lambda _ev: None)
    with pytest.raises(SpawnError, match="the fork server did not start"):
        pool.start()
    assert not pool.alive
    assert my_children() <= before


def event_kinds(c: VsmClient) -> list[str]:
    return [e["kind"] for e in c.events()[1]]


def test_a_fork_server_that_cannot_restart_is_retried_while_the_daemon_answers(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "break-agents"
    monkeypatch.setenv("VSMD_TEST_BREAK_AGENTS", str(marker))  # the daemon's env, inherited
    config = {"agent_modules": ["tests.support.agents", "tests.support.fragile_agents"]}
    with running_daemon(broker_url, tmp_path / "state", config=config) as d:
        c = d.client()
        fork_server = next(
            p
            for p in psutil.Process(d.proc.pid).children()
            if "forkserver" in " ".join(p.cmdline())
        )
        marker.touch()  # every fork server from now on fails before its hello
        fork_server.kill()
        poll_for(lambda: "forkserver_failed" in event_kinds(c), timeout=60, what="a failed start")
        assert c.ping()["pong"]  # the daemon answers on
        with pytest.raises(SpawnError) as refused:
            c.spawn_recursive_vsm(None, SpawnConfig(name="meanwhile"))
        assert "the fork server is not running; retrying in " in refused.value.message
        [failed, *_] = [e for e in c.events()[1] if e["kind"] == "forkserver_failed"]
        assert failed["details"]["attempt"] == 1
        assert "retrying in 1 s" in failed["message"]

        marker.unlink()
        poll_for(
            lambda: "forkserver_restarted" in event_kinds(c), timeout=120, what="a new fork server"
        )
        assert c.spawn_recursive_vsm(None, SpawnConfig(name="after")).status == "running"
        assert "fork server" in d.log() and "retrying in" in d.log()
