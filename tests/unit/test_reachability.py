"""Reachability: a returned probe marks a running VSM unreachable; speaking or a probe that went
through marks it reachable; the parent hears of both; other states are never flagged."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fakes import FakeClock
from vsmd.daemon.events import EventLog
from vsmd.daemon.reachability import Reachability, probe_period
from vsmd.daemon.registry import Registry, Status, VsmRecord


class Bus:
    """Sends probes into a list; ``down`` holds the ids whose inbox is gone."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down: set[str] = set()
        self.connected = True

    def __call__(self, rec: VsmRecord, corr: str) -> bool:
        if self.connected:
            self.sent.append(corr)
        return self.connected

    def returns(self) -> list[str]:
        return [c for c in self.sent if c.rpartition(".")[0] in self.down]


def record(vsm_id: str, parent: str | None = None) -> VsmRecord:
    path = vsm_id if parent is None else f"{parent}.{vsm_id}"
    rec = VsmRecord(vsm_id, vsm_id, parent, path, path.count(".") + 1, "noop", {})
    rec.status = Status.RUNNING
    return rec


@pytest.fixture
def world() -> tuple[Registry, Bus, EventLog, list[tuple[str, str, dict[str, Any]]], Reachability]:
    reg = Registry()
    reg.add(record("p"))
    reg.add(record("k", "p"))
    bus, events, notes = Bus(), EventLog(100), []
    reach = Reachability(
        reg, bus, events, lambda r, k, b: notes.append((r.id, k, dict(b))), FakeClock()
    )
    return reg, bus, events, notes, reach


def round_trip(bus: Bus, reach: Reachability) -> None:
    """One probe round, and the broker's returns for it."""
    bus.sent.clear()
    reach.probe_slice(0, 1)
    for corr in bus.returns():
        reach.on_return(corr)


def test_a_returned_probe_marks_unreachable_and_a_probe_through_marks_back(world: Any) -> None:
    reg, bus, events, notes, reach = world
    round_trip(bus, reach)
    assert reg.get("k").info().status == "running" and notes == []
    bus.down.add("k")
    round_trip(bus, reach)
    assert reg.get("k").info().status == "unreachable"
    assert reg.get("p").info().status == "running"
    assert notes == [("p", "child_unreachable", {"child": "k", "path": "p.k"})]
    round_trip(bus, reach)  # still cut off: no second notice
    assert len(notes) == 1
    bus.down.clear()
    round_trip(bus, reach)  # this round's probe is sent ...
    assert reg.get("k").info().status == "unreachable"
    round_trip(bus, reach)  # ... and was not returned by the next
    assert reg.get("k").info().status == "running"
    assert notes[1][:2] == ("p", "child_reachable")
    kinds = [e.kind for e in events.since(0, 100)]
    assert kinds == ["unreachable", "reachable"]


def test_speaking_again_marks_reachable_at_once(world: Any) -> None:
    reg, bus, _events, notes, reach = world
    bus.down.add("k")
    round_trip(bus, reach)
    reach.heard_from("p.k")
    assert reg.get("k").info().status == "running"
    assert [n[1] for n in notes] == ["child_unreachable", "child_reachable"]
    reach.heard_from("p")  # a VSM never flagged: nothing to say
    assert len(notes) == 2


def test_late_returns_and_unsent_probes_say_nothing(world: Any) -> None:
    reg, bus, _events, notes, reach = world
    reach.probe_slice(0, 1)
    old = list(bus.sent)
    reach.probe_slice(0, 1)
    for corr in old:  # returns of the round before: stale
        reach.on_return(corr)
    assert reg.get("k").unreachable_since is None
    bus.down.add("k")
    round_trip(bus, reach)
    bus.connected = False  # the daemon lost the broker: probes are not sent ...
    reach.probe_slice(0, 1)
    reach.probe_slice(0, 1)
    assert reg.get("k").info().status == "unreachable"  # ... so none counts as through
    assert len(notes) == 1


def test_nobody_is_flagged_while_all_reconnect_after_an_outage(world: Any) -> None:
    reg, bus, _events, notes, reach = world
    clock = reach._clock
    reach.hold(10.0)
    bus.down.update({"p", "k"})  # they have not reconnected yet
    round_trip(bus, reach)
    assert reg.get("k").unreachable_since is None and notes == []
    clock.advance(10.0)
    bus.down.discard("p")  # p is back, k is not: now k is cut off on its own
    round_trip(bus, reach)
    assert reg.get("k").info().status == "unreachable"
    assert reg.get("p").info().status == "running"


@pytest.mark.parametrize("status", [Status.STARTING, Status.STOPPING, Status.EXITED])
def test_only_running_vsms_are_flagged(world: Any, status: Status) -> None:
    reg, bus, _events, _notes, reach = world
    bus.down.add("k")
    round_trip(bus, reach)
    assert reg.get("k").unreachable_since is not None
    reg.get("k").status = status
    round_trip(bus, reach)
    assert reg.get("k").unreachable_since is None
    assert reg.get("k").info().status == str(status)
    assert not any(c.startswith("k.") for c in bus.sent)  # not probed either


def test_each_vsm_is_probed_once_per_cycle_of_slices_and_judged_in_its_own(world: Any) -> None:
    reg, bus, _events, notes, reach = world
    for name in "abcdefgh":
        reg.add(record(name, "p"))
    parts = 3
    for part in range(parts):
        reach.probe_slice(part, parts)
    probed = [c.rpartition(".")[0] for c in bus.sent]
    assert sorted(probed) == sorted(r.id for r in reg.all())  # each once, none twice
    # k's probe comes back after other slices have been probed since: it still counts.
    bus.down.add("k")
    bus.sent.clear()
    k_part = hash("k") % parts
    reach.probe_slice(k_part, parts)
    for part in range(parts):
        if part != k_part:
            reach.probe_slice(part, parts)
    for corr in bus.returns():
        reach.on_return(corr)
    assert reg.get("k").info().status == "unreachable"
    assert notes == [("p", "child_unreachable", {"child": "k", "path": "p.k"})]
    # Back: k's next probe goes through, and k's own slice (not another) says so.
    bus.down.clear()
    reach.probe_slice(k_part, parts)
    for part in range(parts):
        if part != k_part:
            reach.probe_slice(part, parts)
    assert reg.get("k").info().status == "unreachable"
    reach.probe_slice(k_part, parts)
    assert reg.get("k").info().status == "running"


def test_probes_of_removed_vsms_are_forgotten(world: Any) -> None:
    reg, _bus, _events, _notes, reach = world
    reach.probe_slice(0, 1)
    reg.remove("k")
    reach.probe_slice(0, 1)
    assert "k" not in reach._pending


def test_the_probe_period_stretches_so_that_probes_stay_within_the_rate() -> None:
    assert probe_period(5.0, 200.0, 0) == 5.0
    assert probe_period(5.0, 200.0, 1_000) == 5.0  # 200 probes a second: the interval holds
    assert probe_period(5.0, 200.0, 3_000) == 15.0  # 3,000 in 15 s: still 200 a second
    assert probe_period(1.0, 10.0, 25) == 2.5
