"""Process faults with real processes: the fork server's parent check, an agent's helpers under
quotas and after kill -9 of vsmd, a fork server that cannot be restarted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from vsmd.supervisor.forkserver import MAX_PACKET
from vsmd.supervisor.oscalls import EXIT_PARENT_GONE


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
