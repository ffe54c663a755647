"""The daemon's handle on the fork server: start it, send it requests, hear its reports."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson

from vsmd.errors import SpawnError
from vsmd.spec import VsmSpec
from vsmd.supervisor.forkserver import MAX_PACKET

log = logging.getLogger("vsmd.pool")

EventSink = Callable[[dict[str, Any]], None]


class ForkServerPool:
    """Runs ``python -m vsmd.supervisor.forkserver`` and relays its events to ``sink``.

    The sink is called from a reader thread; the daemon queues the event and wakes its loop.
    """

    def __init__(
        self,
        sink: EventSink,
        agent_modules: tuple[str, ...] = (),
        strategy: str = "forkserver",
        gc_freeze: bool = True,
    ) -> None:
        self._sink = sink
        self._agent_modules = agent_modules
        self.strategy = strategy
        self.gc_freeze = gc_freeze
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self.pid: int | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_PACKET * 2)
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-P",  # not the daemon's working directory first on the path: this install
                "-m",
                "vsmd.supervisor.forkserver",
                str(theirs.fileno()),
                str(os.getpid()),  # its parent: it checks it is still there
                *self._agent_modules,
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._sock = ours
        hello = orjson.loads(ours.recv(MAX_PACKET) or b"{}")
        if hello.get("ev") != "hello":
            raise SpawnError("the fork server did not start; see the log above")
        self.pid = int(hello["pid"])
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()
        log.info("fork server %d ready", self.pid)

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                raw = sock.recv(MAX_PACKET)
            except OSError:
                raw = b""
            if not raw:
                self._sink({"ev": "forkserver_exited"})
                return
            self._sink(orjson.loads(raw))

    def _send(self, msg: dict[str, Any]) -> None:
        if self._sock is None:
            raise SpawnError("the fork server is not running")
        try:
            with self._send_lock:
                self._sock.send(orjson.dumps(msg))
        except OSError as exc:
            raise SpawnError(f"the fork server is gone: {exc.strerror}") from None

    def spawn(self, spec: VsmSpec) -> None:
        self._send(
            {
                "op": "spawn",
                "spec": spec.to_dict(),
                "strategy": self.strategy,
                "gc_freeze": self.gc_freeze,
            }
        )

    def kill(self, pid: int, sig: int) -> None:
        with contextlib.suppress(SpawnError):
            self._send({"op": "kill", "pid": pid, "sig": sig})

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the fork server to kill what is left and exit; wait for it."""
        if self._proc is None:
            return
        with contextlib.suppress(SpawnError):
            self._send({"op": "shutdown"})
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._reader is not None:
            self._reader.join(timeout)
        self._proc = None
        self._sock = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
