"""A namespace on the broker: what a stopped daemon leaves, and `vsmd namespace remove`."""

from __future__ import annotations

from pathlib import Path

import pika
import pika.exceptions

from tests.support.harness import cleanup_namespace, run_tool, start_daemon
from vsmd.bus.topology import Topology


def existing(broker_url: str, topo: Topology) -> set[str]:
    """Which of the namespace's queues and exchange the broker has (passive declares)."""
    found = set()
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        for name in (topo.admin_queue, topo.daemon_queue, topo.dead_queue, topo.exchange):
            ch = conn.channel()
            try:
                if name == topo.exchange:
                    ch.exchange_declare(name, passive=True)
                else:
                    ch.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404, exc
                continue
            found.add(name)
            ch.close()
    finally:
        conn.close()
    return found


def test_a_stopped_daemon_leaves_what_a_restart_needs_and_remove_takes_the_rest(
    broker_url: str, tmp_path: Path
) -> None:
    d = start_daemon(broker_url, tmp_path / "state")
    topo = Topology(d.namespace)
    try:
        d.client().spawn_recursive_vsm(None, None)
        assert existing(broker_url, topo) == {
            topo.admin_queue,
            topo.daemon_queue,
            topo.dead_queue,
            topo.exchange,
        }
        busy = run_tool(
            "vsmd", "namespace", "remove", d.namespace, namespace=d.namespace, broker_url=broker_url
        )
        assert busy.returncode == 1, busy
        assert (
            busy.stderr.strip()
            == f"vsmd: CONFLICT: a daemon consumes {topo.admin_queue}; stop it first"
        )
        assert d.client().ping()["pong"]  # refused before anything was deleted
        assert d.stop() == 0
        assert existing(broker_url, topo) == {topo.admin_queue, topo.dead_queue}

        res = run_tool(
            "vsmd", "namespace", "remove", d.namespace, namespace=d.namespace, broker_url=broker_url
        )
        assert res.returncode == 0, res
        assert res.stdout == (
            f"removed {topo.admin_queue}, {topo.dead_queue} from "
            "amqp://guest:***@localhost:5672/%2F\n"
        )
        assert existing(broker_url, topo) == set()
        again = run_tool(
            "vsmd", "namespace", "remove", d.namespace, namespace=d.namespace, broker_url=broker_url
        )
        assert again.returncode == 0, again
        assert again.stdout.startswith(f"namespace {d.namespace} has nothing on ")
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace)


def test_an_event_follower_keeps_the_exchange_across_a_stop(
    broker_url: str, tmp_path: Path
) -> None:
    d = start_daemon(broker_url, tmp_path / "state")
    topo = Topology(d.namespace)
    follower = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = follower.channel()
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        ch.queue_bind(queue, topo.exchange, "event.#")  # as `vsmctl events --follow` does
        assert d.stop() == 0
        assert existing(broker_url, topo) == {topo.admin_queue, topo.dead_queue, topo.exchange}
        # Still bound: the next daemon's events reach it without a new subscription.
        again = start_daemon(broker_url, tmp_path / "state", namespace=d.namespace)
        try:
            again.client().spawn_recursive_vsm(None, None)
        finally:
            again.stop()
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        assert method is not None and b'"kind"' in body
    finally:
        follower.close()
        d.stop()
        cleanup_namespace(broker_url, d.namespace)


def test_remove_without_a_broker_or_with_a_bad_name(broker_url: str) -> None:
    gone = run_tool(
        "vsmd",
        "namespace",
        "remove",
        "tnobroker",
        "--broker",
        "amqp://guest:guest@127.0.0.1:1/%2F",
        namespace="tnobroker",
        broker_url=broker_url,
    )
    assert gone.returncode == 3, gone
    assert gone.stderr.startswith("vsmd: cannot connect to broker amqp://guest:***@127.0.0.1:1/")
    bad = run_tool("vsmd", "namespace", "remove", "Bad Name", namespace="x", broker_url=broker_url)
    assert bad.returncode == 2, bad
    assert "invalid namespace 'Bad Name'" in bad.stderr
    private = run_tool(
        "vsmd",
        "namespace",
        "remove",
        "tprivate",
        "--broker",
        "embedded",
        namespace="tprivate",
        broker_url=broker_url,
    )
    assert private.returncode == 2 and "needs an AMQP URL" in private.stderr, private
