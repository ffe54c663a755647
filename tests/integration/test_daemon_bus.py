"""The daemon's connection on the real broker: what it does when it loses the broker between a
request and its answer, and what a refused queue delete does to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pika.spec import BasicProperties as Props

from tests.support.harness import cleanup_namespace, new_namespace, poll_for
from vsmd.bus.daemon_bus import DaemonBus
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError


@pytest.fixture
def topo(broker_url: str) -> Iterator[Topology]:
    ns = new_namespace()
    try:
        yield Topology(ns)
    finally:
        cleanup_namespace(broker_url, ns)


def _daemon_bus(url: str, topo: Topology, asked: list[Props]) -> DaemonBus:
    bus = DaemonBus(url, topo, 30, lambda props, _body: asked.append(props), lambda *_a: None)
    bus.connect()
    return bus


def _heard(bus: DaemonBus, asked: list[Props]) -> list[Props]:
    bus.pump(0.05)
    return asked


def _pump_until(conn: pika.BlockingConnection, done: Any, what: str) -> None:
    deadline = time.monotonic() + 15
    while not done() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert done(), f"timed out waiting for {what}"


def test_an_answer_made_while_the_daemon_is_away_reaches_the_client(
    broker_url: str, topo: Topology
) -> None:
    """The client's connection outlives the daemon's; the answer comes after the reconnect."""
    asked: list[Props] = []
    bus = _daemon_bus(broker_url, topo, asked)
    client = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = client.channel()
        answers: list[tuple[str, bytes]] = []
        ch.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda _c, _m, props, body: answers.append((props.correlation_id, body)),
            auto_ack=True,
        )
        request = Props(reply_to="amq.rabbitmq.reply-to", correlation_id="c1")
        ch.basic_publish("", topo.admin_queue, b"{}", request)
        poll_for(lambda: _heard(bus, asked), what="the request at the daemon")

        bus.close()  # the daemon's connection is gone while it works on the request
        bus.reply(asked[0], b'{"ok": true}')  # held, not dropped
        bus.connect()
        _pump_until(client, lambda: answers, "the answer")
        assert answers == [("c1", b'{"ok": true}')]
    finally:
        client.close()
        bus.close()


def test_a_refused_delete_leaves_the_daemon_connected(broker_url: str, topo: Topology) -> None:
    """Deleting a queue that another connection holds exclusively is refused by the broker; it
    must cost a side channel, not the channel the daemon consumes and answers on."""
    asked: list[Props] = []
    bus = _daemon_bus(broker_url, topo, asked)
    holder = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        held = topo.inbox("x1")
        holder.channel().queue_declare(held, exclusive=True)
        with pytest.raises(BrokerError, match="RESOURCE_LOCKED"):
            bus.delete_queue(held)
        assert bus.connected
        client = pika.BlockingConnection(pika.URLParameters(broker_url))
        try:
            client.channel().basic_publish("", topo.admin_queue, b"{}", Props())
            poll_for(lambda: _heard(bus, asked), what="the next request at the daemon")
        finally:
            client.close()
    finally:
        holder.close()
        bus.close()
