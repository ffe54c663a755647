"""The daemon alone loses its connection (the broker and the VSMs' connections stay): after its
reconnect every VSM sends its whole state again, so whatever the old connection had delivered
and the daemon had not handled yet is healed.

The daemon's one connection on the shared broker is closed with rabbitmqctl; nothing else is.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pika
import psutil

from tests.support.harness import poll_for, running_daemon
from vsmd.bus.topology import Topology
from vsmd.protocol import SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}


def _close_connection_of(pid: int, broker_port: int) -> None:
    """Close, at the broker, the AMQP connection that process ``pid`` holds."""
    ports = [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == broker_port
    ]
    assert len(ports) == 1, ports
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "peer_port", "pid"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    [conn_pid] = [
        line.split()[1] for line in listed.splitlines() if line.split()[:1] == [str(ports[0])]
    ]
    subprocess.run(
        ["rabbitmqctl", "close_connection", conn_pid, "a test of the daemon's reconnect"],
        capture_output=True,
        timeout=60,
        check=True,
    )


def _whole_states(conn: pika.BlockingConnection, queue: str, seen: dict[str, Any]) -> set[str]:
    """Collect the state messages that carry ``data.x`` (a whole state, not a rates delta)."""
    ch = conn.channel()
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            conn.sleep(0.02)
            continue
        env = orjson.loads(body)
        keys = {(e["s"], e["k"]) for e in env["body"].get("entries", [])}
        if env["type"] == "state" and ("data", "x") in keys:
            seen[env["sender"]] = env["body"]
    ch.close()
    return set(seen)


def test_every_vsm_sends_its_state_again_after_the_daemons_reconnect(
    broker_url: str, tmp_path: Path
) -> None:
    with running_daemon(broker_url, tmp_path / "state", config=AGENTS) as d:
        c = d.client(timeout=60)
        r = c.spawn_recursive_vsm(None, SpawnConfig(name="r", agent="recorder")).id
        k = c.spawn_recursive_vsm(r, SpawnConfig(name="k", agent="recorder")).id
        for vsm in (r, k):
            c.call(vsm, "do", {"op": "state_set", "data": {"x": vsm}, "flush": True})
        listener = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            ch = listener.channel()
            queue = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(queue, Topology(d.namespace).exchange, "up.#")
            seen: dict[str, Any] = {}
            _whole_states(listener, queue, seen)
            assert seen == {}  # nobody sends a whole state while nothing happens

            assert d.proc.pid is not None
            _close_connection_of(d.proc.pid, pika.URLParameters(broker_url).port)
            poll_for(
                lambda: _whole_states(listener, queue, seen) == {r, k},
                timeout=30,
                what="both VSMs to send their whole state",
            )
            assert "broker is back" in d.log()
            assert c.state(k)["data"] == {"x": k}
        finally:
            listener.close()
