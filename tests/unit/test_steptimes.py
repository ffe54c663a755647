"""Per-step time of a spawn: the counter class on a fake clock, then the steps a spawn, its ready
report, a restart and a refusal count through the control plane."""

from __future__ import annotations

from typing import Any

import orjson

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Replies, run_for
from vsmd.daemon.control import Control
from vsmd.daemon.journal import Journal
from vsmd.daemon.steptimes import STEPS, StepTimes
from vsmd.daemon.timers import Timers
from vsmd.protocol import Envelope, Ping, Policy, Spawn, SpawnConfig

# --- the counters -----------------------------------------------------------------------------


def test_a_step_counts_once_with_its_wall_and_cpu_time() -> None:
    clock, cpu = FakeClock(10.0), FakeClock(3.0)
    steps = StepTimes(clock, cpu)
    began = steps.begin()
    clock.advance(0.25)
    cpu.advance(0.125)
    steps.end("journal", began)
    began = steps.begin()
    clock.advance(0.5)
    cpu.advance(0.25)
    steps.end("journal", began)
    assert steps.counts["journal"] == 2
    assert steps.seconds["journal"] == 0.75
    assert steps.cpu_seconds["journal"] == 0.375
    assert all(steps.counts[s] == 0 for s in STEPS if s != "journal")


def test_the_next_step_begins_where_the_last_ended() -> None:
    clock = FakeClock()
    steps = StepTimes(clock, clock)
    began = steps.begin()
    clock.advance(1.0)
    began = steps.end("admission", began)
    clock.advance(2.0)
    steps.end("journal", began)
    assert (steps.seconds["admission"], steps.seconds["journal"]) == (1.0, 2.0)
    assert (steps.cpu_seconds["admission"], steps.cpu_seconds["journal"]) == (1.0, 2.0)


def test_a_nested_step_counts_under_its_own_name_only() -> None:
    clock = FakeClock()
    steps = StepTimes(clock, clock)
    ready = steps.begin()
    clock.advance(1.0)
    reply = steps.begin()
    clock.advance(4.0)
    events = steps.begin()  # nested two deep
    clock.advance(2.0)
    steps.end("events", events)
    steps.end("reply", reply)
    clock.advance(1.0)
    steps.end("ready", ready)
    assert (steps.seconds["ready"], steps.seconds["reply"], steps.seconds["events"]) == (2, 4, 2)
    assert sum(steps.seconds.values()) == 8.0  # the outer step's wall time, counted once
    assert steps.cpu_seconds == steps.seconds  # the same accounting for CPU time
    assert steps.counts["ready"] == steps.counts["reply"] == steps.counts["events"] == 1


def test_the_snapshot_is_a_copy_of_every_step() -> None:
    clock = FakeClock()
    steps = StepTimes(clock, clock)
    began = steps.begin()
    clock.advance(0.5)
    steps.end("reply", began)
    snap = steps.snapshot()
    assert list(snap) == list(STEPS)
    assert snap["reply"] == {"count": 1, "seconds": 0.5, "cpu_seconds": 0.5}
    steps.end("reply", steps.begin())
    assert snap["reply"]["count"] == 1  # the endpoint's copy does not move under it


# --- what a spawn counts ----------------------------------------------------------------------


def counts(control: Control) -> dict[str, Any]:
    replies = Replies()
    control.handle_admin(orjson.dumps(Ping().to_request()), replies)
    steps: dict[str, dict[str, Any]] = replies.only()["result"]["spawn_steps"]
    assert all(f["seconds"] >= 0 and f["cpu_seconds"] >= 0 for f in steps.values())
    return {step: figures["count"] for step, figures in steps.items()}


def ready(control: Control, vsm_id: str, path: str, pid: int) -> None:
    env = Envelope(type="ready", sender=vsm_id, body={"pid": pid})
    control.handle_vsm(path, "ready", env.encode(), Replies())


def test_every_step_of_a_spawn_counts_once(
    make_manager: MakeManager, journal: Journal, pool: FakePool
) -> None:
    manager = make_manager(journal=journal)
    control = Control(manager.config, manager)
    admin = Replies()
    control.handle_admin(orjson.dumps(Spawn(name="alpha").to_request()), admin)
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 77)
    ready(control, vsm_id, "alpha", 77)
    assert admin.only()["ok"] is True
    # A first start publishes no event: the events step is for refusals and restarts.
    assert counts(control) == {
        "admission": 1,
        "journal": 1,
        "cgroups": 0,  # this manager has none (tests/integration/test_cgroups.py counts them)
        "fork_request": 1,
        "ready": 1,
        "reply": 1,
        "events": 0,
    }
    timed = [s for s in STEPS if s not in ("events", "cgroups")]
    assert all(manager.steps.seconds[s] > 0 for s in timed)
    assert all(manager.steps.cpu_seconds[s] > 0 for s in timed)


def test_a_restart_forks_and_reports_ready_with_an_event_and_no_reply(
    make_manager: MakeManager, pool: FakePool, clock: FakeClock, timers: Timers
) -> None:
    manager = make_manager()
    control = Control(manager.config, manager)
    manager.spawn_recursive_vsm(None, SpawnConfig(name="a", policy=Policy(restart="permanent")))
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 10)
    ready(control, vsm_id, "a", 10)
    before = counts(control)
    manager.on_exited(vsm_id, 10, 1, None)
    run_for(clock, timers, 5.0)  # past its backoff: asked of the pool again
    manager.on_spawned(vsm_id, 11)
    ready(control, vsm_id, "a", 11)
    grew = {step: n - before[step] for step, n in counts(control).items()}
    assert grew == {step: 0 for step in STEPS} | {"fork_request": 1, "ready": 1, "events": 1}


def test_a_throttled_spawn_counts_its_admission_and_its_event(make_manager: MakeManager) -> None:
    manager = make_manager(spawn_rate=0.001, spawn_burst=1)
    control = Control(manager.config, manager)
    manager.spawn_recursive_vsm(None, SpawnConfig(name="a"))
    refused = manager.spawn_recursive_vsm(None, SpawnConfig(name="b"))
    assert refused.exception() is not None
    assert counts(control) == {step: 0 for step in STEPS} | {
        "admission": 2,
        "fork_request": 1,
        "events": 1,
    }
