"""systemd's notify protocol with a real daemon: the test is the service manager's socket."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import poll_for, running_daemon
from vsmd.protocol import SpawnConfig


class Listener:
    def __init__(self) -> None:
        self.name = f"vsmd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)  # NOTIFY_SOCKET=@name: the abstract namespace
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def count(self, line: str) -> int:
        return sum(line in m.split("\n") for m in self.read())


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.sock.close()


def test_ready_status_watchdog_and_stopping(
    broker_url: str, tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The harness hands the test's environment to the daemon it starts.
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    with running_daemon(broker_url, tmp_path) as d:
        # The daemon answered ping: it said READY=1 before its loop began to answer.
        assert listener.count("READY=1") == 1
        c = d.client()
        for name in ("a", "b"):
            c.spawn_recursive_vsm(None, SpawnConfig(name=name))
        poll_for(lambda: listener.count("STATUS=2 VSMs"), 60, 0.1, "STATUS= with 2 VSMs")
        poll_for(lambda: listener.count("WATCHDOG=1") >= 3, 60, 0.1, "repeated WATCHDOG=1")
        assert listener.count("STOPPING=1") == 0
    assert d.proc.returncode == 0
    assert listener.count("STOPPING=1") == 1
    assert listener.count("READY=1") == 1
