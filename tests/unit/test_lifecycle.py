"""Exits, restarts with backoff, restart intensity and escalation, through the SpawnManager."""

from __future__ import annotations

import signal
import time

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Notes, Tree, events_of, run_for
from tests.unit.helpers import status
from vsmd.daemon.registry import Status
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers
from vsmd.errors import SpawnError
from vsmd.protocol import Policy

TERM, KILL = signal.SIGTERM, signal.SIGKILL
# The unit config's backoff starts at 0.1 s with a jitter of at most 25 %.
FIRST_MIN, FIRST_MAX = 0.1, 0.125
PERMANENT = Policy(restart="permanent")


def crash_and_return(
    tree: Tree, clock: FakeClock, timers: Timers, vsm_id: str, code: int = 1
) -> int:
    """The VSM exits with ``code``, waits out its backoff and is running again; its new pid."""
    tree.exit(vsm_id, code=code)
    assert status(tree.manager, vsm_id) is Status.BACKOFF
    run_for(clock, timers, 5.0)
    assert status(tree.manager, vsm_id) is Status.STARTING
    return tree.come_back(vsm_id)


def test_permanent_vsm_exiting_0_is_restarted(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha", policy=PERMANENT)
    old_pid = tree.pid(info.id)
    before = time.time()
    tree.exit(info.id, code=0)
    after = time.time()

    backoff = manager.show(info.id)
    assert backoff.status == "backoff"
    assert backoff.pid is None
    assert backoff.next_restart is not None
    assert before + FIRST_MIN <= backoff.next_restart <= after + FIRST_MAX
    assert backoff.last_exit == "exit code 0"
    assert backoff.last_reason == "exited on its own (exit code 0)"
    [scheduled] = events_of(manager, "restart_scheduled")
    assert FIRST_MIN <= scheduled.details["delay"] <= FIRST_MAX
    assert scheduled.details["exit"] == "exit code 0"
    assert scheduled.vsm_id == info.id

    run_for(clock, timers, FIRST_MIN - 0.001)
    assert len(pool.spawned) == 1  # not before the delay
    run_for(clock, timers, FIRST_MAX - FIRST_MIN + 0.001)
    assert len(pool.spawned) == 2
    spec = pool.last
    assert (spec.vsm_id, spec.path, spec.name) == (info.id, "alpha", "alpha")
    assert spec.parent_id is None
    assert spec.policy == {"restart": "permanent"}
    starting = manager.show(info.id)
    assert (starting.status, starting.restarts, starting.next_restart) == ("starting", 1, None)

    new_pid = tree.come_back(info.id)
    running = manager.show(info.id)
    assert (running.status, running.pid, running.restarts) == ("running", new_pid, 1)
    assert new_pid != old_pid
    [restarted] = events_of(manager, "restarted")
    assert restarted.vsm_id == info.id
    assert restarted.details == {"pid": new_pid}
    assert events_of(manager, "exited") == []


def test_a_restarted_parent_keeps_its_children(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    parent = tree.start(name="p")
    kid = tree.start(parent=parent.id, name="k")
    crash_and_return(tree, clock, timers, parent.id)
    assert manager.show(parent.id).children == [kid.id]
    assert manager.show(kid.id).status == "running"
    assert pool.kills == []
    assert [s.vsm_id for s in pool.spawned] == [parent.id, kid.id, parent.id]


@pytest.mark.parametrize(("code", "restarted"), [(0, False), (2, True)])
def test_transient_restarts_only_after_an_abnormal_exit(
    make_manager: MakeManager,
    pool: FakePool,
    timers: Timers,
    clock: FakeClock,
    code: int,
    restarted: bool,
) -> None:
    manager = make_manager(default_restart="temporary")  # the VSM's own policy wins
    tree = Tree(manager, pool)
    info = tree.start(name="alpha", policy=Policy(restart="transient"))
    tree.exit(info.id, code=code)
    run_for(clock, timers, 100.0)
    assert len(pool.spawned) == (2 if restarted else 1)
    assert status(manager, info.id) is (Status.STARTING if restarted else Status.EXITED)


@pytest.mark.parametrize(("code", "sig"), [(0, None), (1, None), (None, KILL)])
def test_temporary_is_never_restarted(
    manager: SpawnManager,
    pool: FakePool,
    tree: Tree,
    timers: Timers,
    clock: FakeClock,
    code: int | None,
    sig: int | None,
) -> None:
    info = tree.start(name="alpha", policy=Policy(restart="temporary"))
    tree.exit(info.id, code=code, sig=sig)
    run_for(clock, timers, 100.0)
    assert len(pool.spawned) == 1
    assert manager.show(info.id).status == ("exited" if code == 0 else "failed")
    assert manager.show(info.id).next_restart is None
    assert events_of(manager, "restart_scheduled") == []


@pytest.mark.parametrize(
    ("restart", "code", "sig", "exit_text"),
    [
        ("transient", 0, None, "exit code 0"),
        ("temporary", 3, None, "exit code 3"),
        ("temporary", None, KILL, "killed by SIGKILL"),
    ],
)
def test_a_child_its_policy_keeps_down_tells_its_parent(
    manager: SpawnManager,
    pool: FakePool,
    tree: Tree,
    timers: Timers,
    clock: FakeClock,
    notes: Notes,
    restart: str,
    code: int | None,
    sig: int | None,
    exit_text: str,
) -> None:
    parent = tree.start(name="p")
    kid = tree.start(parent=parent.id, name="k", policy=Policy(restart=restart))
    tree.exit(kid.id, code=code, sig=sig)
    run_for(clock, timers, 100.0)
    assert len(pool.spawned) == 2  # no restart
    reason = f"exited on its own ({exit_text})"
    assert manager.show(kid.id).last_reason == reason
    assert notes.sent == [
        (
            parent.id,
            "child_exited",
            {"child": kid.id, "path": "p.k", "exit": exit_text, "reason": reason},
        )
    ]
    assert events_of(manager, "escalated") == []  # staying down is not a failure to escalate


def test_a_top_level_vsm_its_policy_keeps_down_tells_nobody(
    manager: SpawnManager, tree: Tree, notes: Notes
) -> None:
    info = tree.start(name="solo", policy=Policy(restart="temporary"))
    tree.exit(info.id, code=1)
    assert manager.show(info.id).status == "failed"
    assert notes.sent == []
    [exited] = events_of(manager, "exited")
    assert exited.vsm_id == info.id


def test_intensity_exceeded_fails_and_escalates_to_the_parent(
    make_manager: MakeManager, pool: FakePool, timers: Timers, clock: FakeClock, notes: Notes
) -> None:
    manager = make_manager(max_restarts=2)
    tree = Tree(manager, pool)
    parent = tree.start(name="p")
    kid = tree.start(parent=parent.id, name="k")
    crash_and_return(tree, clock, timers, kid.id)
    crash_and_return(tree, clock, timers, kid.id)
    tree.exit(kid.id, code=1)  # the third crash within 60 s

    failed = manager.show(kid.id)
    assert failed.status == "failed"
    assert failed.restarts == 2
    assert failed.next_restart is None
    assert failed.last_reason is not None
    assert "restart intensity" in failed.last_reason
    assert "more than 2 restarts in 60 s" in failed.last_reason
    assert failed.last_reason.endswith("last: exited on its own (exit code 1)")
    [failed_event] = events_of(manager, "failed")
    assert failed_event.vsm_id == kid.id
    assert failed_event.details == {"exit": "exit code 1"}
    [escalated] = events_of(manager, "escalated")
    assert (escalated.vsm_id, escalated.details) == (kid.id, {"parent": parent.id})
    assert "p.k" in escalated.message
    assert notes.sent == [
        (parent.id, "child_failed", {"child": kid.id, "path": "p.k", "reason": failed.last_reason})
    ]
    # on_child_failure is "ignore" by default: the parent runs on, nothing comes back.
    assert manager.show(parent.id).status == "running"
    run_for(clock, timers, 1000.0)
    assert len(pool.spawned) == 4
    assert pool.kills == []


def test_intensity_exceeded_at_the_top_level_tells_the_event_stream_only(
    make_manager: MakeManager, pool: FakePool, timers: Timers, clock: FakeClock, notes: Notes
) -> None:
    manager = make_manager(max_restarts=1)
    tree = Tree(manager, pool)
    info = tree.start(name="solo")
    crash_and_return(tree, clock, timers, info.id)
    tree.exit(info.id, sig=KILL)
    assert manager.show(info.id).status == "failed"
    [escalated] = events_of(manager, "escalated")
    assert escalated.details == {"parent": None}
    assert "the daemon" in escalated.message
    assert notes.sent == []


def test_on_child_failure_terminate_stops_the_parents_subtree(
    make_manager: MakeManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    manager = make_manager(max_restarts=1)
    tree = Tree(manager, pool)
    parent = tree.start(name="p", policy=Policy(on_child_failure="terminate"))
    kid = tree.start(parent=parent.id, name="k")
    sibling = tree.start(parent=parent.id, name="s")
    crash_and_return(tree, clock, timers, kid.id)
    tree.exit(kid.id, code=1)

    for vsm_id in (parent.id, kid.id, sibling.id):
        assert status(manager, vsm_id) is Status.STOPPING
    assert pool.kills == [(tree.pid(sibling.id), TERM)]  # leaves first; the kid has no process
    tree.exit(sibling.id)
    assert pool.kills[-1] == (tree.pid(parent.id), TERM)
    tree.exit(parent.id)
    assert len(manager.registry) == 0
    [terminated] = events_of(manager, "terminated")
    assert set(terminated.details["ids"]) == {parent.id, kid.id, sibling.id}
    assert any("stops its subtree" in e.message for e in events_of(manager, "escalated"))


def test_on_child_failure_restart_brings_the_whole_subtree_back(
    make_manager: MakeManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    manager = make_manager(max_restarts=1)
    tree = Tree(manager, pool)
    parent = tree.start(name="p", policy=Policy(on_child_failure="restart"))
    kid = tree.start(parent=parent.id, name="k")
    sibling = tree.start(parent=parent.id, name="s")
    grandkid = tree.start(parent=sibling.id, name="g", policy=Policy(restart="temporary"))
    crash_and_return(tree, clock, timers, kid.id)
    pids = {i.id: tree.pid(i.id) for i in (parent, sibling, grandkid)}
    tree.exit(kid.id, code=1)

    # Every live node of the parent's subtree gets SIGKILL, leaves first; the kid has no process.
    assert pool.kills == [
        (pids[grandkid.id], KILL),
        (pids[sibling.id], KILL),
        (pids[parent.id], KILL),
    ]
    assert status(manager, kid.id) is Status.BACKOFF
    for vsm_id, pid in pids.items():
        manager.on_exited(vsm_id, pid, None, KILL)
        assert status(manager, vsm_id) is Status.BACKOFF  # even the temporary grandkid
    spawned_before = len(pool.spawned)
    run_for(clock, timers, 5.0)
    again = [s.vsm_id for s in pool.spawned[spawned_before:]]
    assert sorted(again) == sorted([kid.id, parent.id, sibling.id, grandkid.id])
    for vsm_id in again:
        tree.come_back(vsm_id)
    for vsm_id in (parent.id, sibling.id, grandkid.id):
        assert manager.show(vsm_id).status == "running"
        assert manager.show(vsm_id).restarts == 1
    assert manager.show(kid.id).status == "running"
    assert manager.show(kid.id).restarts == 2
    assert manager.show(sibling.id).children == [grandkid.id]
    assert len(events_of(manager, "restarted")) == 5
    assert any("restarts its subtree" in e.message for e in events_of(manager, "escalated"))


def test_a_restart_that_does_not_get_ready_is_killed_and_counts_as_a_crash(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="slow")
    tree.exit(info.id, code=1)
    run_for(clock, timers, FIRST_MAX)
    manager.on_spawned(info.id, 7777)
    run_for(clock, timers, 9.999)
    assert pool.kills == []
    run_for(clock, timers, 0.001)  # spawn_timeout is 10 s
    assert pool.kills == [(7777, KILL)]
    assert manager.show(info.id).last_reason == "VSM slow did not report ready within 10 s"
    manager.on_exited(info.id, 7777, None, KILL)
    assert status(manager, info.id) is Status.BACKOFF  # not removed: it ran before
    assert len(events_of(manager, "restart_scheduled")) == 2


def test_a_failed_fork_on_restart_counts_as_a_crash(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)
    run_for(clock, timers, FIRST_MAX)
    manager.on_spawn_failed(info.id, "no luck")
    after = manager.show(info.id)
    assert after.status == "backoff"
    assert after.last_exit is not None
    assert "no luck" in after.last_exit
    assert info.id in manager.registry
    run_for(clock, timers, 5.0)
    assert [s.vsm_id for s in pool.spawned] == [info.id] * 3


def test_a_failed_fork_on_restart_is_described_once(
    manager: SpawnManager, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)
    run_for(clock, timers, FIRST_MAX)
    # What the fork server sends when fork() fails with EAGAIN.
    manager.on_spawn_failed(info.id, "fork failed: Resource temporarily unavailable")
    assert manager.show(info.id).last_exit == "fork failed: Resource temporarily unavailable"


def test_a_restart_whose_fork_is_never_reported_is_not_stuck(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)
    run_for(clock, timers, FIRST_MAX)
    assert len(pool.spawned) == 2  # asked, and no answer ever comes
    run_for(clock, timers, 10.0)  # spawn_timeout
    assert status(manager, info.id) is not Status.STARTING
    run_for(clock, timers, 5.0)
    assert len(pool.spawned) == 3  # it is tried again


def test_a_pool_error_on_restart_counts_as_a_crash(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)
    pool.spawn_error = SpawnError("the fork server is gone")
    run_for(clock, timers, FIRST_MAX)
    assert status(manager, info.id) is Status.BACKOFF
    assert manager.show(info.id).restarts == 1
    pool.spawn_error = None
    run_for(clock, timers, 5.0)
    tree.come_back(info.id)
    assert manager.show(info.id).restarts == 2


def test_a_restart_that_exits_0_before_ready_stays_down(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha")  # transient
    tree.exit(info.id, code=1)
    run_for(clock, timers, FIRST_MAX)
    manager.on_spawned(info.id, 5000)
    manager.on_exited(info.id, 5000, 0, None)  # a clean exit: transient keeps it down
    after = manager.show(info.id)
    assert (after.status, after.last_exit) == ("exited", "exit code 0")
    run_for(clock, timers, 100.0)
    assert len(pool.spawned) == 2


def test_the_reason_a_vsm_reported_survives_its_exit(manager: SpawnManager, tree: Tree) -> None:
    info = tree.start(name="alpha")
    manager.on_failure_report(info.id, "agent failed: ValueError: boom")
    tree.exit(info.id, code=4)
    after = manager.show(info.id)
    assert after.last_reason == "exited on its own (exit code 4): agent failed: ValueError: boom"
    [scheduled] = events_of(manager, "restart_scheduled")
    assert "boom" in scheduled.message


def test_a_reported_reason_is_used_once(
    manager: SpawnManager, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="alpha")
    manager.on_failure_report(info.id, "agent failed: ValueError: boom")
    crash_and_return(tree, clock, timers, info.id, code=4)
    tree.exit(info.id, code=1)  # this time it said nothing
    assert manager.show(info.id).last_reason == "exited on its own (exit code 1)"


def test_a_child_that_always_fails_ends_up_failing_its_restarting_parent(
    make_manager: MakeManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    manager = make_manager(max_restarts=2)
    tree = Tree(manager, pool)
    parent = tree.start(name="p", policy=Policy(on_child_failure="restart"))
    kid = tree.start(parent=parent.id, name="k")
    for _round in range(20):  # bounded: the loop below must end well before this
        if status(manager, parent.id) is Status.FAILED:
            break
        for vsm_id in (kid.id, parent.id):
            if status(manager, vsm_id) is Status.STARTING:
                tree.come_back(vsm_id)
        if status(manager, kid.id) is Status.RUNNING:
            tree.exit(kid.id, code=1)
        if (
            status(manager, parent.id) is Status.RUNNING
            and manager.registry.get(parent.id).force_restart
        ):
            manager.on_exited(parent.id, tree.pid(parent.id), None, KILL)
        run_for(clock, timers, 5.0)
    assert status(manager, parent.id) is Status.FAILED
    assert "restart intensity exceeded" in (manager.show(parent.id).last_reason or "")
    assert any(e.vsm_id == parent.id for e in events_of(manager, "escalated"))
