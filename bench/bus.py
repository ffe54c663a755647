"""The bench's own bus tools: pipelined admin requests and a listener for "ready" messages."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import pika
import pika.exceptions

from vsmd.bus.connection import close_quietly, connect, login_of
from vsmd.bus.topology import Topology
from vsmd.protocol import Command

REPLY_TO = "amq.rabbitmq.reply-to"


class BenchError(Exception):
    """A measurement could not be taken."""


class AdminPipe:
    """Many admin requests in flight on one connection, each reply time-stamped on arrival.

    This is how a busy client (or many clients) loads the daemon: it is not serialized on one
    client round trip per request.
    """

    def __init__(self, url: str, namespace: str) -> None:
        self.topo = Topology(namespace)
        self._conn = connect(url, heartbeat=0, timeout=10.0)
        self._ch = self._conn.channel()
        self._ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        self._replies: dict[str, tuple[float, bytes]] = {}

    def _on_reply(self, _ch: Any, _m: Any, props: pika.BasicProperties, body: bytes) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = (time.perf_counter(), body)

    def run(
        self, commands: Sequence[Command], timeout: float
    ) -> tuple[float, list[tuple[float, dict[str, Any]]]]:
        """Send every command at once; (send time, [(seconds after send, reply)]) in order."""
        corrs: list[str] = []
        start = time.perf_counter()
        for cmd in commands:
            corr = uuid.uuid4().hex
            # user_id: a secure daemon takes admin requests from operators' logins only.
            props = pika.BasicProperties(
                reply_to=REPLY_TO, correlation_id=corr, user_id=login_of(self._conn)
            )
            self._ch.basic_publish("", self.topo.admin_queue, orjson.dumps(cmd.to_request()), props)
            corrs.append(corr)
        deadline = start + timeout
        while any(c not in self._replies for c in corrs):
            if time.perf_counter() > deadline:
                missing = sum(1 for c in corrs if c not in self._replies)
                raise BenchError(f"{missing} of {len(corrs)} replies missing after {timeout:g} s")
            self._conn.process_data_events(time_limit=0.05)
        out: list[tuple[float, dict[str, Any]]] = []
        for c in corrs:
            at, body = self._replies.pop(c)
            out.append((at - start, orjson.loads(body)))
        return start, out

    def one(self, command: Command, timeout: float = 60.0) -> tuple[float, dict[str, Any]]:
        _start, [(took, reply)] = self.run([command], timeout)
        return took, reply

    def close(self) -> None:
        close_quietly(self._conn)


class ReadyListener:
    """Collects "ready" messages on its own connection and thread, time-stamped on arrival.

    With ``bind`` it listens to an exchange (a vsmd namespace's ``up.#.ready``); without, peers
    publish straight to :attr:`queue`.
    """

    def __init__(self, url: str, bind: tuple[str, str] | None = None) -> None:
        self._conn = connect(url, heartbeat=0, timeout=10.0)
        ch = self._conn.channel()
        # Named by us: peers derive their own queue names from it ("amq.*" is reserved).
        self.queue = f"bench-ready-{uuid.uuid4().hex[:12]}"
        ch.queue_declare(self.queue, exclusive=True)
        if bind is not None:
            ch.queue_bind(self.queue, bind[0], bind[1])
        ch.basic_consume(self.queue, self._on_message, auto_ack=True)
        self._cond = threading.Condition()
        self._arrivals: list[tuple[float, dict[str, Any]]] = []
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ready-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop:
                self._conn.process_data_events(time_limit=0.1)
        except Exception as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _on_message(self, _ch: Any, _m: Any, _props: Any, body: bytes) -> None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {}
        with self._cond:
            self._arrivals.append((time.perf_counter(), data if isinstance(data, dict) else {}))
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._arrivals.clear()

    def count(self) -> int:
        with self._cond:
            return len(self._arrivals)

    def wait_for(self, n: int, timeout: float) -> list[tuple[float, dict[str, Any]]]:
        """Block until ``n`` messages arrived; the first ``n`` (arrival time, body)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self._arrivals) >= n or self._error is not None, timeout
            )
            if self._error is not None:
                raise BenchError(f"ready listener failed: {self._error!r}")
            if not ok:
                raise BenchError(f"only {len(self._arrivals)} of {n} ready after {timeout:g} s")
            return list(self._arrivals[:n])

    def close(self) -> None:
        self._stop = True
        self._thread.join(5.0)
        close_quietly(self._conn)


def delete_namespace(url: str, namespace: str) -> None:
    """Remove what a daemon leaves on the broker on purpose (durable admin queue, exchange)."""
    topo = Topology(namespace)
    with contextlib.suppress(Exception):
        conn = connect(url, heartbeat=0)
        try:
            ch = conn.channel()
            for queue in (topo.admin_queue, topo.daemon_queue):
                ch.queue_delete(queue)
            ch.exchange_delete(topo.exchange)
        finally:
            close_quietly(conn)


class Tap:
    """A queue of our own bound to a key of the tree's exchange: it counts what was routed
    there (a copy of each message, left in the queue until :meth:`take`)."""

    def __init__(self, url: str, exchange: str, key: str) -> None:
        self._conn = connect(url, heartbeat=0, timeout=10.0)
        self._ch = self._conn.channel()
        self.queue = f"bench-tap-{uuid.uuid4().hex[:12]}"
        self._ch.queue_declare(self.queue)
        self._ch.queue_bind(self.queue, exchange, key)

    def take(self, sample: int = 200) -> tuple[int, float]:
        """(messages routed here, mean size in bytes of the first ``sample``); then gone."""
        try:
            count = self._ch.queue_declare(self.queue, passive=True).method.message_count
            sizes: list[int] = []
            for _ in range(min(sample, count)):
                _m, _props, body = self._ch.basic_get(self.queue, auto_ack=True)
                if body is None:
                    break
                sizes.append(len(body))
            return count, (sum(sizes) / len(sizes) if sizes else 0.0)
        finally:
            with contextlib.suppress(Exception):
                self._ch.queue_delete(self.queue)
            close_quietly(self._conn)
