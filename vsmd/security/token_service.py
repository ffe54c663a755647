"""Hands each VSM its own token over a Unix socket, and nobody else's.

The caller is known by SO_PEERCRED: the kernel's word for its pid, which the fork server
reported for that VSM. So no secret passes through the fork server (whose memory every later
VSM inherits), argv or the environment. A VSM asks at start, before every reconnect and to
refresh its token before it expires.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

import orjson

from vsmd.bus.topology import Topology
from vsmd.security.identity import Place, vsm_scopes, vsm_user
from vsmd.security.tokens import TokenMinter

log = logging.getLogger("vsmd.tokens")
PID_WAIT = 5.0  # a child may ask before the daemon heard its pid from the fork server
# Askers answered at once at most: each may wait PID_WAIT for its pid, and a hostile VSM
# connecting in a loop must not make the daemon start threads without end.
MAX_WAITING = 64


class TokenService:
    def __init__(
        self,
        minter: TokenMinter,
        topo: Topology,
        path: str,
        ttl: float,
        on_refused: Callable[[int, str], None] | None = None,
    ) -> None:
        self.minter = minter
        self.topo = topo
        self.path = path
        self.ttl = ttl
        self._on_refused = on_refused
        self._lock = threading.Condition()
        self._places: dict[str, Place] = {}
        self._pids: dict[int, str] = {}
        self._sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_WAITING)
        self.issued = 0

    # --- called by the daemon (any thread) -------------------------------------------------

    def register(self, place: Place) -> None:
        with self._lock:
            self._places[place.vsm_id] = place

    def bind_pid(self, vsm_id: str, pid: int) -> None:
        with self._lock:
            self._pids[pid] = vsm_id
            self._lock.notify_all()

    def forget(self, vsm_id: str) -> None:
        with self._lock:
            self._places.pop(vsm_id, None)
            for pid in [p for p, v in self._pids.items() if v == vsm_id]:
                del self._pids[pid]

    def forget_pid(self, pid: int) -> None:
        with self._lock:
            self._pids.pop(pid, None)

    def token_for(self, vsm_id: str) -> str:
        with self._lock:
            place = self._places[vsm_id]
        return self.minter.mint(
            vsm_user(vsm_id), vsm_scopes(self.minter, self.topo, place), self.ttl
        )

    # --- the socket ------------------------------------------------------------------------

    def start(self) -> None:
        # An abstract socket (``path`` starts with NUL): no file whose mode or directory would
        # have to let VSMs of other uids in, no path-length limit; SO_PEERCRED decides who gets
        # what.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(128)
        self._sock = sock
        threading.Thread(target=self._serve, name="tokens", daemon=True).start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many at once: the VSM retries like any broker failure
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            self._answer_one(conn)
        finally:
            self._slots.release()

    def _answer_one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(PID_WAIT + 5.0)
            pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            vsm_id = self._wait_for(pid)
            reply: dict[str, object]
            if vsm_id is None:
                log.warning("token refused to pid %d: not a VSM's main process", pid)
                if self._on_refused is not None:
                    self._on_refused(pid, "token request from a process that is no VSM")
                reply = {"error": "no VSM runs as this process"}
            else:
                try:
                    reply = {
                        "token": self.token_for(vsm_id),
                        "user": vsm_user(vsm_id),
                        "ttl": self.ttl,
                    }
                    self.issued += 1
                    log.debug("token issued to %s (pid %d)", vsm_user(vsm_id), pid)
                except KeyError:
                    reply = {"error": "this VSM is no longer registered"}
            with contextlib.suppress(OSError):
                conn.sendall(orjson.dumps(reply))

    def _wait_for(self, pid: int) -> str | None:
        deadline = time.monotonic() + PID_WAIT
        with self._lock:
            while True:
                vsm_id = self._pids.get(pid)
                if vsm_id is not None:
                    return vsm_id
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)


def fetch_token_blocking(path: str, timeout: float = 15.0) -> dict[str, object]:
    """The client side, for processes without an event loop (tests, tools)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply: dict[str, object] = orjson.loads(b"".join(chunks))
    return reply
