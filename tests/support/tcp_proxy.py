"""A TCP proxy in front of the broker that can cut one process's connections, for partition drills.

Everything connects through it (daemon, VSMs, clients); ``cut(pid)`` closes the connections that
process holds to the proxy and refuses its new ones until ``heal(pid)``: a network partition of
one VSM, while the daemon and the other VSMs stay connected. Which process holds a connection is
read from the kernel (psutil) by the client side's port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

import psutil

_HOST = "127.0.0.1"
_CHUNK = 65536


class TcpProxy:
    def __init__(self, broker_url: str) -> None:
        parts = urlsplit(broker_url)
        self._target = (parts.hostname or _HOST, parts.port or 5672)
        self._url = parts
        self._listener = socket.create_server((_HOST, 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: dict[int, tuple[socket.socket, socket.socket]] = {}  # by the client's port
        self._cut: set[int] = set()
        self.refused = 0  # connections refused while their process was cut off
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        user, at, _ = self._url.netloc.rpartition("@")
        return self._url._replace(netloc=f"{user}{at}{_HOST}:{self.port}").geturl()

    def cut(self, pid: int) -> int:
        """Close ``pid``'s connections and refuse its new ones; how many were closed."""
        with self._lock:
            self._cut.add(pid)
            ports = self._ports_of(pid) & set(self._pairs)
            pairs = [self._pairs.pop(p) for p in ports]
        for pair in pairs:
            _close(*pair)
        return len(pairs)

    def heal(self, pid: int) -> None:
        with self._lock:
            self._cut.discard(pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            pairs, self._pairs = list(self._pairs.values()), {}
        for pair in pairs:
            _close(*pair)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _ports_of(self, pid: int) -> set[int]:
        """Local ports of ``pid``'s TCP connections to this proxy."""
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            return set()
        return {c.laddr.port for c in conns if c.raddr and c.raddr.port == self.port}

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, (_host, port) = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                blocked = any(port in self._ports_of(pid) for pid in self._cut)
            if blocked:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs[port] = (client, upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, port), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, port: int) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            # Only our own pair: the client's port may already belong to a new connection.
            if src in self._pairs.get(port, ()):
                del self._pairs[port]
        _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        # shutdown wakes the thread blocked in recv on it; close alone would not.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
