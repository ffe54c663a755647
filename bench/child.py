"""The peers' workload, the same as a VSM's start: connect to RabbitMQ with pika, open a
channel, declare and consume a queue of its own, publish "ready", then idle (heartbeats served)
until SIGTERM, then close the connection cleanly, as a VSM does.

Two shapes of that work. Without an exchange (supervisord's programs and the multiprocessing
peer): an exclusive queue, "ready" straight to the collector's queue. With one (the floor,
bench.forkfloor): the broker operations a root VSM makes before it reports ready, one for one
(vsmd/vsm/bus.py): confirm mode, prefetch, an exclusive inbox bound to the topic exchange under
four keys without waiting for bind-ok, a consumer with acks, and "ready" published through the
exchange, mandatory and confirmed.

``python -m bench.child URL READY_QUEUE NAME`` (supervisord's programs), or ``child_main`` as the
target of a multiprocessing process or of a plain fork.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import pika


class _Stop(Exception):
    pass


_STOPPING: list[bool] = []


def _on_term(_sig: int, _frame: FrameType | None) -> None:
    _STOPPING.append(True)
    raise _Stop


def _ignore(*_args: Any) -> None:
    return None


def _plain(ch: Any, ready_queue: str, name: str, began: float) -> None:
    ch.basic_qos(prefetch_count=32)
    queue = f"{ready_queue}.{name}"
    ch.queue_declare(queue, exclusive=True)  # gone with the connection: nothing to clean up
    ch.basic_consume(queue, _ignore, auto_ack=True)
    ch.basic_publish("", ready_queue, _ready(name, began))


def _vsm_like(ch: Any, exchange: str, name: str, began: float) -> None:
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=64)  # a VSM's PREFETCH
    inbox = f"{exchange}.in.{name}"
    ch.queue_declare(inbox, exclusive=True)
    for key in (f"down.{name}", f"id.{name}", f"toparent.{name}.*", f"alg.{name}.*"):
        # The blocking adapter always waits for bind-ok; its channel without a callback does
        # not, which is how a VSM binds (one round trip saved per key).
        ch._impl.queue_bind(inbox, exchange, key)
    ch.basic_consume(inbox, _ignore)
    # Confirmed and mandatory, as a VSM's "ready": this returns once the broker routed it.
    ch.basic_publish(exchange, f"up.{name}.ready", _ready(name, began), mandatory=True)


def _ready(name: str, began: float) -> bytes:
    body = {"name": name, "pid": os.getpid(), "setup_ms": (time.perf_counter() - began) * 1e3}
    return json.dumps(body).encode()


def child_main(url: str, ready_queue: str, name: str, exchange: str | None = None) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    began = time.perf_counter()
    conn: Any = None
    try:
        params = pika.URLParameters(url)
        params.heartbeat = 30
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        if exchange is None:
            _plain(ch, ready_queue, name, began)
        else:
            _vsm_like(ch, exchange, name, began)
        while True:
            conn.process_data_events(time_limit=1.0)
    except _Stop:
        pass
    except Exception:
        # Raised inside pika's I/O, the stop comes back wrapped (StreamLostError): still a stop.
        if not _STOPPING:
            raise
    finally:
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


def noop() -> None:
    """Warms up multiprocessing's fork server."""


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2], sys.argv[3])
