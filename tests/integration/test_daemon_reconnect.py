"""The daemon alone loses its connection (the broker and the VSMs' connections stay): after its
reconnect every VSM sends its whole state again, so whatever the old connection had delivered
and the daemon had not handled yet is healed.

The daemon's one connection on the shared broker is closed with rabbitmqctl; nothing else is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pika

from tests.support.harness import close_connection_of, poll_for, running_daemon
from vsmd.bus.topology import Topology
from vsmd.protocol import SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}


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
            close_connection_of(d.proc.pid, pika.URLParameters(broker_url).port)
            poll_for(
                lambda: _whole_states(listener, queue, seen) == {r, k},
                timeout=30,
                what="both VSMs to send their whole state",
            )
            assert "broker is back" in d.log()
            assert c.state(k)["data"] == {"x": k}
        finally:
            listener.close()
