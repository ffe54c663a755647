"""A VSM's inbox at its start, on the real broker: declare, binds and consume go out without
waiting for their answers and the ready report's confirm is the one wait; when the broker
refuses a step (the VSM's previous incarnation still holds the inbox) the start goes step by
step on a new channel, and the ready report still arrives exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest

from tests.support.harness import cleanup_namespace, new_namespace
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError
from vsmd.spec import VsmSpec
from vsmd.vsm.bus import VsmBus
from vsmd.vsm.calls import Delivery
from vsmd.vsm.sync import up_message

WAIT = 10.0  # seconds a delivery may take on a busy broker; polled, never slept


@dataclass
class Tree:
    namespace: str
    topo: Topology
    url: str
    collector: str  # a queue bound to every report a VSM sends up


@pytest.fixture
def tree(broker_url: str) -> Iterator[Tree]:
    ns = new_namespace()
    topo = Topology(ns)
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.exchange_declare(topo.exchange, exchange_type="topic")
    collector = f"{ns}.collector"
    ch.queue_declare(collector)
    ch.queue_bind(collector, topo.exchange, "up.#")
    conn.close()
    try:
        yield Tree(ns, topo, broker_url, collector)
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        conn.channel().queue_delete(collector)
        conn.close()
        cleanup_namespace(broker_url, ns)


def _spec(tree: Tree, namespace: str | None = None) -> VsmSpec:
    return VsmSpec(
        vsm_id="c0ffee000001",
        name="leaf",
        path="root.leaf",
        parent_id="feed00000001",
        depth=2,
        agent="noop",
        broker_url=tree.url,
        namespace=namespace or tree.namespace,
        ancestors=("feed00000001",),
    )


def _collected(tree: Tree) -> list[str]:
    """Routing keys of what the collector holds, taken off it."""
    conn = pika.BlockingConnection(pika.URLParameters(tree.url))
    ch = conn.channel()
    keys = []
    while True:
        method, _props, _body = ch.basic_get(tree.collector, auto_ack=True)
        if method is None:
            break
        keys.append(method.routing_key)
    conn.close()
    return keys


async def _until(what: Any, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not what():
        assert loop.time() < end, "not there in time"
        await asyncio.sleep(0.01)


async def _serves_every_key(bus: VsmBus, tree: Tree, got: list[Delivery]) -> None:
    """A message on each of the inbox's keys reaches it."""
    keys = tree.topo.inbox_bindings(bus.spec.vsm_id, bus.spec.path, bus.ancestors)
    for key in keys:
        await bus.publish(key, b'{"type": "probe", "sender": "test"}')
    await _until(lambda: len(got) == len(keys), WAIT)


def _run_start(tree: Tree, bus: VsmBus, got: list[Delivery]) -> None:
    async def main() -> None:
        ready = up_message(bus.spec, tree.topo, "ready", {"pid": 1})
        try:
            await bus.open(first=ready)
            await _serves_every_key(bus, tree, got)
            # Confirmed after the ready report on the same channel: once it is in, so is
            # anything else the start may have let through.
            await bus.publish(tree.topo.up_key(bus.spec.path, "marker"), b"{}")
        finally:
            await bus.close()

    asyncio.run(main())


def _bus(spec: VsmSpec, got: list[Delivery]) -> VsmBus:
    async def record(msg: Delivery) -> None:
        got.append(msg)
        await msg.ack()

    return VsmBus(spec, Topology(spec.namespace), record)


def _recording_step_by_step(
    bus: VsmBus, monkeypatch: pytest.MonkeyPatch, before: Callable[[], None] = lambda: None
) -> list[bool]:
    """Whether the start went step by step, noted as it goes on; ``before`` runs first."""
    step_by_step = bus._open_step_by_step
    taken: list[bool] = []

    async def recorded() -> None:
        taken.append(True)
        before()
        await step_by_step()

    monkeypatch.setattr(bus, "_open_step_by_step", recorded)
    return taken


@pytest.mark.parametrize("at_once", [True, False], ids=["at-once", "step-by-step"])
def test_a_start_binds_its_inbox_and_reports_ready_once(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, at_once: bool
) -> None:
    """All at once; and step by step, as a reconnect (or a refused step) goes."""
    got: list[Delivery] = []
    bus = _bus(_spec(tree), got)
    taken = _recording_step_by_step(bus, monkeypatch)
    if not at_once:

        async def refused(_first: Any) -> bool:
            return False

        monkeypatch.setattr(bus, "_open_at_once", refused)
    _run_start(tree, bus, got)
    assert taken == ([] if at_once else [True])
    assert _collected(tree) == ["up.root.leaf.ready", "up.root.leaf.marker"]


def test_a_start_waits_for_the_inbox_its_previous_incarnation_holds(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tree)
    holder = pika.BlockingConnection(pika.URLParameters(tree.url))
    holder.channel().queue_declare(tree.topo.inbox(spec.vsm_id), exclusive=True)
    got: list[Delivery] = []
    bus = _bus(spec, got)
    # The steps at once were refused (RESOURCE_LOCKED): then the old incarnation goes.
    fell_back = _recording_step_by_step(bus, monkeypatch, before=holder.close)
    _run_start(tree, bus, got)
    assert fell_back == [True]
    # The broker dropped the first ready report with the channel it closed: one arrived.
    assert _collected(tree) == ["up.root.leaf.ready", "up.root.leaf.marker"]


def test_a_start_the_broker_refuses_fails_with_a_broker_error(tree: Tree) -> None:
    got: list[Delivery] = []
    # Another namespace, whose exchange nobody declared: the binds are refused (404).
    bus = _bus(_spec(tree, namespace=new_namespace()), got)

    async def main() -> None:
        ready = up_message(bus.spec, bus.topo, "ready", {"pid": 1})
        await bus.open(first=ready)

    with pytest.raises(BrokerError, match="cannot set up the inbox"):
        asyncio.run(main())
    assert bus.lost.is_set() or bus._conn is None  # given up, nothing left open
    assert _collected(tree) == [] and got == []
