"""The sd_notify protocol against a datagram socket the test listens on."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsmd.daemon import notify
from vsmd.daemon.notify import Notifier
from vsmd.daemon.timers import Timers


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_datagram_to_a_path(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.send("READY=1", "STATUS=3 VSMs")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 VSMs"
    n.close()


def test_abstract_socket() -> None:
    name = f"vsmd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        sock.close()


def test_nothing_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    n.send("READY=1")  # no socket, no error
    timers = Timers(clock=lambda: 0.0)
    notify.start(n, timers, lambda: 0)
    assert timers.next_delay(60.0) == 60.0  # nothing scheduled


def test_a_gone_listener_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    n.send("READY=1")
    n.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "", **env}).watchdog_interval == interval


def test_environment_is_taken_out_for_children(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    n = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.watchdog_interval == 1.0
    n.send("READY=1")
    assert sock.recv(4096) == b"READY=1"
    n.close()


def test_ready_status_and_watchdog_from_the_timers(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    now = [0.0]
    timers = Timers(clock=lambda: now[0])
    count = [2]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    notify.start(n, timers, lambda: count[0])
    assert received(sock) == ["READY=1\nSTATUS=2 VSMs", "WATCHDOG=1"]
    now[0] = 1.0
    timers.run_due()
    assert received(sock) == ["WATCHDOG=1"]
    count[0] = 7
    now[0] = notify.STATUS_EVERY
    timers.run_due()
    got = received(sock)
    assert "STATUS=7 VSMs" in got
    assert "WATCHDOG=1" in got
    n.close()
