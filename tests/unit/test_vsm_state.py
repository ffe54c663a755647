"""The VSM-side replica: writes, summaries, size limits, chunked deltas, policy layers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vsmd.errors import BrokerError, ProtocolError, TooLarge
from vsmd.spec import VsmSpec
from vsmd.state import Clock, Entry, encode
from vsmd.vsm.state import StateReplica


def spec(limit: int = 65536, ancestors: tuple[str, ...] = ("root0000000",)) -> VsmSpec:
    return VsmSpec(
        vsm_id="me0000000000",
        name="me",
        path="root.me",
        parent_id=ancestors[-1] if ancestors else None,
        depth=len(ancestors) + 1,
        agent="noop",
        broker_url="amqp://x",
        namespace="t",
        max_message_bytes=limit,
        ancestors=ancestors,
    )


class Sink:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, delta: dict[str, Any]) -> None:
        self.sent.append(delta)

    async def flush(self) -> None:
        return None


def replica(limit: int = 65536) -> tuple[StateReplica, Sink]:
    sink = Sink()
    return StateReplica(spec(limit), sink.send, sink.flush), sink


def test_writes_made_together_travel_in_one_delta() -> None:
    async def run() -> tuple[StateReplica, Sink]:
        state, sink = replica()
        state.set("a", 1)
        state.count("hits", 2)
        state.health("degraded")
        await state.flush()
        return state, sink

    state, sink = asyncio.run(run())
    assert len(sink.sent) == 1
    keys = {(e["s"], e["k"]) for e in sink.sent[0]["entries"]}
    assert {("data", "a"), ("metrics", "c.hits"), ("metrics", "health")} <= keys
    assert state.own.section("metrics")["subtree"] == {
        "count": 1,
        "worst_health": "degraded",
        "counters": {"hits": 2},
    }


def test_children_add_up_in_the_subtree_summary() -> None:
    async def run() -> StateReplica:
        state, _sink = replica()
        clock = Clock("kid")
        for kid, (hits, health) in {"k1": (3, "ok"), "k2": (4, "failing")}.items():
            summary = {"count": 2, "worst_health": health, "counters": {"hits": hits}}
            state.apply_child(kid, encode({("metrics", "subtree"): Entry(summary, clock.tick())}))
        state.count("hits", 1)
        state.forget_child("k1")
        return state

    state = asyncio.run(run())
    assert state.own.section("metrics")["subtree"] == {
        "count": 3,
        "worst_health": "failing",
        "counters": {"hits": 5},
    }


def test_only_a_childs_summary_makes_the_parent_sum_its_children_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Summing walks every child: a child's rate report (msg_in, msg_out) must not start it,
    or a parent of a thousand children walks them all on each of their reports."""

    async def run() -> tuple[StateReplica, list[int]]:
        state, _sink = replica()
        sums: list[int] = []  # how many times it summed, after each delta
        calls = 0
        summarize = state._summarize

        def counted() -> None:
            nonlocal calls
            calls += 1
            summarize()

        monkeypatch.setattr(state, "_summarize", counted)
        clock = Clock("kid")
        state.apply_child("k1", encode({("metrics", "msg_in"): Entry(2.0, clock.tick())}))
        sums.append(calls)
        summary = {"count": 1, "worst_health": "degraded", "counters": {}}
        state.apply_child("k1", encode({("metrics", "subtree"): Entry(summary, clock.tick())}))
        sums.append(calls)
        return state, sums

    state, sums = asyncio.run(run())
    assert sums == [0, 1]  # none for the rates, one for the summary
    assert state.own.section("metrics")["subtree"]["worst_health"] == "degraded"
    assert state.child_states()["k1"]["metrics"]["msg_in"] == 2.0


def test_oversized_and_non_json_values_are_refused() -> None:
    async def run() -> None:
        state, _sink = replica(limit=1000)
        with pytest.raises(TooLarge):
            state.set("big", "x" * 600)
        with pytest.raises(ProtocolError):
            state.set("odd", {1, 2})
        with pytest.raises(ProtocolError):
            state.set("", 1)
        with pytest.raises(ProtocolError):
            state.health("great")
        state.set("fits", "x" * 400)

    asyncio.run(run())


def test_a_large_delta_is_split_into_messages_that_fit() -> None:
    async def run() -> Sink:
        state, sink = replica(limit=1000)
        for i in range(10):
            state.set(f"k{i}", "y" * 300)
        await state.flush()
        return sink

    sink = asyncio.run(run())
    assert len(sink.sent) > 1
    sent_keys = [e["k"] for d in sink.sent for e in d["entries"] if e["s"] == "data"]
    assert sorted(sent_keys) == sorted(f"k{i}" for i in range(10))


def test_policy_from_above_is_only_tightened_below() -> None:
    async def run() -> StateReplica:
        state, _sink = replica()
        clock = Clock("vsmd")
        layer = {
            ("policy", "max_children"): Entry(4, clock.tick()),
            ("policy", "x-mode"): Entry("safe", clock.tick()),
        }
        state.apply_policy("root0000000", encode(layer))
        state.set_policy("max_children", 9)
        state.set_policy("x-mode", "loose")
        return state

    state = asyncio.run(run())
    assert state.policy == {"max_children": 4, "x-mode": "safe"}


def test_what_is_written_while_a_send_fails_is_sent_next() -> None:
    """A send that fails (a lost broker) drops its delta: the re-sync after the reconnect sends
    the whole state. What was queued while it failed, perhaps that re-sync's on the new
    connection, must go out at once, not wait for a write that may never come."""

    async def run() -> list[set[str]]:
        gate = asyncio.Event()
        sent: list[set[str]] = []
        tries = 0

        async def send(delta: dict[str, Any]) -> None:
            nonlocal tries
            tries += 1
            if tries == 1:
                await gate.wait()
                raise BrokerError("cannot publish: the connection is gone")
            sent.append({e["k"] for e in delta["entries"]})

        async def flush() -> None:
            return None

        state = StateReplica(spec(), send, flush)
        state.set("a", 1)
        while tries == 0:
            await asyncio.sleep(0)
        state.set("b", 2)  # queued while the first send hangs
        gate.set()
        await state.flush()
        return sent

    assert asyncio.run(run()) == [{"b"}]


def test_child_get_reads_one_key_of_one_child() -> None:
    state, _sink = replica()
    v = Clock("kid").tick()
    state.apply_child("kid", encode({("data", "x"): Entry(5, v), ("metrics", "x"): Entry(9, v)}))
    assert state.child_get("kid", "x") == 5  # the data section only, as get
    assert state.child_get("kid", "y", "none") == "none"
    assert state.child_get("nobody", "x", "none") == "none"
    assert state.child_get("kid", "x") == state.child_states()["kid"]["data"]["x"]
