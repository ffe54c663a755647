"""The daemon's handle on the fork server: start it, send it requests, hear its reports."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from vsmd.errors import SpawnError
from vsmd.spec import MAX_PACKET, VsmSpec
from vsmd.supervisor.output import OutputReader

log = logging.getLogger("vsmd.pool")
# A fork server imports the VSM runtime and the agent modules before its hello: seconds on a
# loaded host, never this long unless it hangs.
HELLO_TIMEOUT = 30.0

EventSink = Callable[[dict[str, Any]], None]


def fork_server_env(env: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment minus what may carry a secret (a broker URL with its password,
    credentials): every VSM inherits the fork server's environment."""
    return {k: v for k, v in env.items() if not k.startswith(_SECRET_PREFIXES)}


_SECRET_PREFIXES = ("VSM_BROKER", "VSM_CREDENTIALS", "VSM_TEST_BROKER", "RABBITMQ_", "AMQP_")


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
        memory_merge: bool = False,
        standby: bool = True,
        huge_pages: bool = False,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        self._sink = sink
        self._agent_modules = agent_modules
        self.strategy = strategy
        self.gc_freeze = gc_freeze
        self.memory_merge = memory_merge
        self.standby = standby  # a child forked ahead of the next spawn (standby.py)
        self.huge_pages = huge_pages  # the heap collapsed to huge pages (hugepages.py)
        self.hello_timeout = hello_timeout
        # While no fork server runs: when the daemon tries again (monotonic), for the refusals.
        self.retry_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self.pid: int | None = None
        # Outlives any one fork server: a new one after a crash reports to the same reader.
        self.output = OutputReader()

    def _command(self, fd: int) -> list[str]:
        return [
            sys.executable,
            "-P",  # not the daemon's working directory first on the path: this install
            "-m",
            "vsmd.supervisor.forkserver",
            str(fd),
            str(os.getpid()),  # its parent: it checks it is still there
            *self._agent_modules,
        ]

    def start(self) -> None:
        """Start the fork server and wait for its hello.

        SpawnError if it does not say hello within ``hello_timeout``; nothing is left running.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_PACKET * 2)
        # Its own stderr comes to the log as lines too (a JSON log stays JSON).
        err_r, err_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                self._command(theirs.fileno()),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=err_w,
                stderr=err_w,
                env=fork_server_env(os.environ),
            )
        except OSError as exc:
            ours.close()
            os.close(err_r)
            raise SpawnError(f"the fork server did not start: {exc.strerror}") from None
        finally:
            theirs.close()
            os.close(err_w)
        self.output.add(err_r, logger=logging.getLogger("vsmd.forkserver"))
        self._sock = ours
        try:
            hello = self._hello(ours)
        except SpawnError:
            self._abandon()
            raise
        self.pid = int(hello["pid"])
        self.retry_at = None
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()
        log.info("fork server %d ready", self.pid)

    def _hello(self, sock: socket.socket) -> dict[str, Any]:
        sock.settimeout(self.hello_timeout)
        try:
            raw = sock.recv(MAX_PACKET)
        except TimeoutError:
            raise SpawnError(
                f"the fork server did not say hello within {self.hello_timeout:g} s"
            ) from None
        except OSError as exc:
            raise SpawnError(f"the fork server did not start: {exc.strerror}") from None
        finally:
            sock.settimeout(None)
        try:
            hello: dict[str, Any] = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            hello = {}
        if hello.get("ev") != "hello":
            raise SpawnError("the fork server did not start; see the log above")
        return hello

    def _abandon(self) -> None:
        """Kill a fork server that did not start properly and forget it."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._sock is not None:
            self._sock.close()
        self._proc = None
        self._sock = None

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                raw, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 1)
            except OSError:
                raw, fds = b"", []
            if not raw:
                for fd in fds:
                    os.close(fd)
                self._sink({"ev": "forkserver_exited"})
                return
            event = orjson.loads(raw)
            if fds:  # the read end of a new VSM's stdout and stderr, with its "spawned"
                self.output.add(fds[0], event.get("vsm_id"), event.get("path"), event.get("pid"))
            self._sink(event)

    def _send(self, msg: dict[str, Any]) -> None:
        if self._sock is None:
            if self.retry_at is None:
                raise SpawnError("the fork server is not running")
            wait = max(0.0, self.retry_at - time.monotonic())
            raise SpawnError(f"the fork server is not running; retrying in {math.ceil(wait)} s")
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
                "memory_merge": self.memory_merge,
                "standby": self.standby,
                "huge_pages": self.huge_pages,
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
        # The last words of the VSMs that just died; a pipe an agent's helper still holds
        # (one in a session of its own) must not hold up the stop.
        self.output.drain(1.0)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
