"""Commanded stops against supervision: backoff, abandoned children and quota actions."""

from __future__ import annotations

import logging
import signal

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Tree, events_of, run_for
from tests.unit.helpers import status
from vsmd.daemon.journal import Journal
from vsmd.daemon.quotas import Violation
from vsmd.daemon.registry import Status, VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers
from vsmd.protocol import Policy

TERM, KILL = signal.SIGTERM, signal.SIGKILL
ABANDON = Policy(on_parent_exit="abandon")
MESSAGE = "memory quota exceeded: 80 MiB > 64 MiB for 3 samples"


# --- terminate against restarts ---------------------------------------------------------------


def test_terminate_during_backoff_cancels_the_restart(
    manager: SpawnManager,
    pool: FakePool,
    tree: Tree,
    timers: Timers,
    clock: FakeClock,
    removed: list[VsmRecord],
) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)
    assert status(manager, info.id) is Status.BACKOFF
    fut = manager.terminate_child_vsm(info.id)
    assert fut.result(timeout=0) == [info.id]  # no process: at once
    assert info.id not in manager.registry
    assert [r.id for r in removed] == [info.id]
    run_for(clock, timers, 1000.0)  # the restart timer would have fired by now
    assert len(pool.spawned) == 1
    assert pool.kills == []
    assert info.id not in manager.registry


def test_terminate_of_a_parent_cancels_a_childs_restart(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    parent = tree.start(name="p")
    kid = tree.start(parent=parent.id, name="k")
    tree.exit(kid.id, code=1)
    fut = manager.terminate_child_vsm(parent.id)
    assert pool.kills == [(tree.pid(parent.id), TERM)]  # the kid has no process to wait for
    run_for(clock, timers, 1.0)
    assert len(pool.spawned) == 2  # and it does not come back meanwhile
    tree.exit(parent.id)
    assert fut.result(timeout=0) == [kid.id, parent.id]


@pytest.mark.parametrize(("code", "sig"), [(1, None), (None, KILL), (0, None)])
def test_a_commanded_stop_never_counts_as_a_crash(
    manager: SpawnManager,
    pool: FakePool,
    tree: Tree,
    timers: Timers,
    clock: FakeClock,
    code: int | None,
    sig: int | None,
) -> None:
    info = tree.start(name="alpha", policy=Policy(restart="permanent"))
    rec = manager.registry.get(info.id)
    pid = tree.pid(info.id)
    fut = manager.terminate_child_vsm(info.id)
    manager.on_exited(info.id, pid, code, sig)  # however it ended
    assert fut.result(timeout=0) == [info.id]
    assert rec.status is Status.EXITED
    assert rec.restarts == 0
    assert len(rec.history.times) == 0
    run_for(clock, timers, 1000.0)
    assert len(pool.spawned) == 1
    assert events_of(manager, "restart_scheduled") == []
    assert events_of(manager, "failed") == []


# --- on_parent_exit = abandon -----------------------------------------------------------------


def test_abandoned_child_moves_to_the_top_level_and_keeps_running(
    manager: SpawnManager, pool: FakePool, tree: Tree
) -> None:
    root = tree.start(name="r")
    keeper = tree.start(parent=root.id, name="a", policy=ABANDON)
    grandkid = tree.start(parent=keeper.id, name="a1")
    other = tree.start(parent=root.id, name="b")
    fut = manager.terminate_child_vsm(root.id)
    assert pool.kills == [(tree.pid(other.id), TERM)]
    tree.exit(other.id)
    tree.exit(root.id)
    assert fut.result(timeout=0) == [other.id, root.id]

    moved = manager.show(keeper.id)
    assert (moved.parent, moved.depth, moved.path, moved.status) == (None, 1, "r.a", "running")
    assert moved.children == [grandkid.id]
    below = manager.show(grandkid.id)
    assert (below.parent, below.depth, below.path) == (keeper.id, 2, "r.a.a1")
    assert [i.id for i in manager.list_child_vsms(None, recursive=False)] == [keeper.id]
    assert all(pid not in (tree.pid(keeper.id), tree.pid(grandkid.id)) for pid, _ in pool.kills)
    [event] = events_of(manager, "abandoned")
    assert (event.vsm_id, event.details) == (keeper.id, {"parent": None})
    assert "the top level" in event.message


def test_abandoned_child_moves_to_the_terminated_vsms_parent(
    manager: SpawnManager, tree: Tree
) -> None:
    root = tree.start(name="r")
    middle = tree.start(parent=root.id, name="m")
    keeper = tree.start(parent=middle.id, name="a", policy=ABANDON)
    fut = manager.terminate_child_vsm(middle.id)
    tree.exit(middle.id)
    assert fut.result(timeout=0) == [middle.id]
    moved = manager.show(keeper.id)
    assert (moved.parent, moved.depth, moved.path) == (root.id, 2, "r.m.a")
    assert manager.show(root.id).children == [keeper.id]
    [event] = events_of(manager, "abandoned")
    assert event.details == {"parent": root.id}
    assert "now r" in event.message


def test_default_on_parent_exit_from_the_config(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(default_on_parent_exit="abandon")
    tree = Tree(manager, pool)
    root = tree.start(name="r")
    a = tree.start(parent=root.id, name="a")
    b = tree.start(parent=root.id, name="b", policy=Policy(on_parent_exit="terminate"))
    manager.terminate_child_vsm(root.id)
    assert manager.show(a.id).parent is None
    assert status(manager, a.id) is Status.RUNNING
    assert status(manager, b.id) is Status.STOPPING


def test_an_abandoning_grandchild_stays_under_its_surviving_parent(
    manager: SpawnManager, tree: Tree
) -> None:
    root = tree.start(name="r")
    keeper = tree.start(parent=root.id, name="a", policy=ABANDON)
    grandkid = tree.start(parent=keeper.id, name="g", policy=ABANDON)
    manager.terminate_child_vsm(root.id)
    assert manager.show(keeper.id).parent is None
    assert manager.show(grandkid.id).parent == keeper.id
    assert manager.show(grandkid.id).depth == 2
    assert len(events_of(manager, "abandoned")) == 1


def test_abandon_updates_the_journaled_depth_of_the_whole_moved_subtree(
    make_manager: MakeManager, pool: FakePool, journal: Journal
) -> None:
    manager = make_manager(journal=journal)
    tree = Tree(manager, pool)
    root = tree.start(name="r")
    keeper = tree.start(parent=root.id, name="a", policy=ABANDON)
    grandkid = tree.start(parent=keeper.id, name="g")
    manager.terminate_child_vsm(root.id)
    tree.exit(root.id)
    depths = {e.id: (e.parent, e.depth) for e in journal.load()}
    assert depths == {keeper.id: (None, 1), grandkid.id: (keeper.id, 2)}


# --- quota violations -------------------------------------------------------------------------


def violation(vsm_id: str, action: str) -> Violation:
    return Violation(vsm_id, "memory", MESSAGE, action)


def test_violation_warn_only_tells(
    manager: SpawnManager, pool: FakePool, tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    info = tree.start(name="alpha")
    with caplog.at_level(logging.WARNING, logger="vsmd.daemon.events"):
        manager.on_violation(violation(info.id, "warn"))
    [event] = events_of(manager, "quota_warn")
    assert event.message == f"alpha: {MESSAGE}"
    assert event.details == {"metric": "memory", "action": "warn"}
    assert MESSAGE in caplog.text
    after = manager.show(info.id)
    assert (after.status, after.last_reason) == ("running", MESSAGE)
    assert pool.kills == []


def test_violation_restart_restarts_even_a_temporary_vsm(
    make_manager: MakeManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    manager = make_manager(default_restart="temporary")
    tree = Tree(manager, pool)
    info = tree.start(name="alpha")
    pid = tree.pid(info.id)
    manager.on_violation(violation(info.id, "restart"))
    assert pool.kills == [(pid, TERM)]
    assert status(manager, info.id) is Status.RUNNING  # until it exits
    [event] = events_of(manager, "quota_restart")
    assert MESSAGE in event.message

    tree.exit(info.id, sig=TERM)
    backoff = manager.show(info.id)
    assert backoff.status == "backoff"
    assert backoff.last_reason == MESSAGE
    [scheduled] = events_of(manager, "restart_scheduled")
    assert MESSAGE in scheduled.message
    run_for(clock, timers, 1.0)
    assert pool.last.vsm_id == info.id
    tree.come_back(info.id)
    assert (manager.show(info.id).status, manager.show(info.id).restarts) == ("running", 1)
    # The next exit is judged by the policy again: temporary stays down.
    tree.exit(info.id, code=1)
    assert manager.show(info.id).status == "failed"


def test_violation_terminate_stops_the_subtree(
    manager: SpawnManager, pool: FakePool, tree: Tree, removed: list[VsmRecord]
) -> None:
    info = tree.start(name="alpha")
    kid = tree.start(parent=info.id, name="kid")
    manager.on_violation(violation(info.id, "terminate"))
    [event] = events_of(manager, "quota_terminate")
    assert MESSAGE in event.message
    assert status(manager, info.id) is Status.STOPPING
    assert status(manager, kid.id) is Status.STOPPING
    assert pool.kills == [(tree.pid(kid.id), TERM)]
    tree.exit(kid.id)
    tree.exit(info.id)
    assert [r.id for r in removed] == [kid.id, info.id]


def test_violation_for_a_vsm_that_is_not_running_is_ignored(
    manager: SpawnManager, pool: FakePool, tree: Tree
) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)  # backoff: no process to act on
    manager.on_violation(violation(info.id, "restart"))
    manager.on_violation(violation("ghost", "terminate"))
    assert [e for e in events_of(manager) if e.kind.startswith("quota")] == []
    assert pool.kills == []
