"""The peers' workload, the same as a VSM's start: connect to RabbitMQ with pika, open a
channel, declare and consume a queue of its own, publish "ready", then idle (heartbeats served)
until SIGTERM, then close the connection cleanly, as a VSM does.

``python -m bench.child URL READY_QUEUE NAME`` (supervisord's programs), or ``child_main`` as the
target of a multiprocessing process (the floor).
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


def child_main(url: str, ready_queue: str, name: str) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    began = time.perf_counter()
    conn: Any = None
    try:
        params = pika.URLParameters(url)
        params.heartbeat = 30
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=32)
        queue = f"{ready_queue}.{name}"
        ch.queue_declare(queue, exclusive=True)  # gone with the connection: nothing to clean up
        ch.basic_consume(queue, _ignore, auto_ack=True)
        body = {"name": name, "pid": os.getpid(), "setup_ms": (time.perf_counter() - began) * 1e3}
        ch.basic_publish("", ready_queue, json.dumps(body).encode())
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
