"""SpawnManager terminate and shutdown: leaves first, SIGTERM then SIGKILL, one answer each."""

from __future__ import annotations

import signal

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Tree
from tests.unit.helpers import refusal, spawn, status
from vsmd.daemon.registry import Status, VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers
from vsmd.errors import NotFound, ShuttingDown, SpawnError

TERM, KILL = signal.SIGTERM, signal.SIGKILL


# --- terminate --------------------------------------------------------------------------------


def test_terminate_subtree_leaves_first(
    manager: SpawnManager, pool: FakePool, tree: Tree, removed: list[VsmRecord]
) -> None:
    root = tree.start(name="root")
    other = tree.start(name="other")
    a = tree.start(parent=root.id, name="a")
    sibling = tree.start(parent=root.id, name="sibling")
    a1 = tree.start(parent=a.id, name="a1")
    a1x = tree.start(parent=a1.id, name="a1x")
    a2 = tree.start(parent=a.id, name="a2")
    pid = {i.id: tree.pid(i.id) for i in (a, a1, a1x, a2)}

    fut = manager.terminate_child_vsm(a.id)
    for vsm_id in pid:
        assert status(manager, vsm_id) is Status.STOPPING
    # Only the leaves get SIGTERM at first.
    assert pool.kills == [(pid[a1x.id], TERM), (pid[a2.id], TERM)]

    tree.exit(a1x.id)
    assert pool.kills[2:] == [(pid[a1.id], TERM)]  # a1 has no live child left
    assert status(manager, a1x.id) is Status.EXITED

    tree.exit(a2.id)
    assert pool.kills[3:] == []  # a still has a1
    tree.exit(a1.id)
    assert pool.kills[3:] == [(pid[a.id], TERM)]  # the parent only after all children
    assert not fut.done()
    assert removed == []

    tree.exit(a.id)
    expected = [a1x.id, a1.id, a2.id, a.id]
    assert fut.result(timeout=0) == expected
    assert [r.id for r in removed] == expected
    assert all(sig == TERM for _, sig in pool.kills)
    # Only that subtree is gone.
    assert sorted(r.id for r in manager.registry.all()) == sorted([root.id, other.id, sibling.id])
    assert manager.show(root.id).children == [sibling.id]
    for info in (root, other, sibling):
        assert manager.show(info.id).status == "running"


def test_terminate_escalates_to_sigkill(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="stubborn")
    pid = tree.pid(info.id)
    fut = manager.terminate_child_vsm(info.id, timeout=2.0)
    assert pool.kills == [(pid, TERM)]
    clock.advance(1.999)
    timers.run_due()
    assert pool.kills == [(pid, TERM)]
    clock.advance(0.001)
    timers.run_due()
    assert pool.kills == [(pid, TERM), (pid, KILL)]
    assert not fut.done()
    manager.on_exited(info.id, pid, None, KILL)
    assert fut.result(timeout=0) == [info.id]


def test_terminate_default_grace_is_stop_timeout(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="stubborn")
    pid = tree.pid(info.id)
    manager.terminate_child_vsm(info.id)
    clock.advance(4.9)
    timers.run_due()
    assert (pid, KILL) not in pool.kills
    clock.advance(0.1)  # stop_timeout is 5 s
    timers.run_due()
    assert pool.kills[-1] == (pid, KILL)


def test_no_sigkill_when_it_stops_in_time(
    manager: SpawnManager, pool: FakePool, tree: Tree, timers: Timers, clock: FakeClock
) -> None:
    info = tree.start(name="polite")
    pid = tree.pid(info.id)
    fut = manager.terminate_child_vsm(info.id, timeout=2.0)
    tree.exit(info.id)
    assert fut.result(timeout=0) == [info.id]
    clock.advance(60.0)
    timers.run_due()
    assert pool.kills == [(pid, TERM)]


def test_terminate_while_forking_waits_for_the_pid(
    manager: SpawnManager, pool: FakePool, removed: list[VsmRecord]
) -> None:
    spawn_fut = spawn(manager, name="young")
    vsm_id = pool.last.vsm_id
    stop_fut = manager.terminate_child_vsm(vsm_id)
    assert status(manager, vsm_id) is Status.STOPPING
    assert pool.kills == []  # no pid to signal yet
    assert not stop_fut.done()

    manager.on_spawned(vsm_id, 321)
    assert pool.kills == [(321, TERM)]
    manager.on_ready(vsm_id, 321)  # too late: it is stopping
    assert status(manager, vsm_id) is Status.STOPPING

    manager.on_exited(vsm_id, 321, 0, None)
    assert stop_fut.result(timeout=0) == [vsm_id]
    err = refusal(spawn_fut, SpawnError)
    assert "terminated while starting" in err.message
    assert [r.id for r in removed] == [vsm_id]


def test_terminate_while_starting_with_a_pid(manager: SpawnManager, pool: FakePool) -> None:
    spawn_fut = spawn(manager, name="young")
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 321)
    stop_fut = manager.terminate_child_vsm(vsm_id)
    assert pool.kills == [(321, TERM)]
    manager.on_exited(vsm_id, 321, None, TERM)
    assert stop_fut.result(timeout=0) == [vsm_id]
    refusal(spawn_fut, SpawnError)


def test_terminate_while_forking_then_fork_fails(manager: SpawnManager, pool: FakePool) -> None:
    spawn_fut = spawn(manager, name="young")
    vsm_id = pool.last.vsm_id
    stop_fut = manager.terminate_child_vsm(vsm_id)
    manager.on_spawn_failed(vsm_id, "fork failed")
    assert stop_fut.result(timeout=0) == [vsm_id]
    refusal(spawn_fut, SpawnError)
    assert pool.kills == []
    assert len(manager.registry) == 0


@pytest.mark.parametrize("code", [0, 1])
def test_terminate_of_an_exited_vsm_resolves_at_once(
    make_manager: MakeManager, pool: FakePool, removed: list[VsmRecord], code: int
) -> None:
    manager = make_manager(default_restart="temporary")
    tree = Tree(manager, pool)
    info = tree.start(name="done")
    tree.exit(info.id, code=code)
    fut = manager.terminate_child_vsm(info.id)
    assert fut.result(timeout=0) == [info.id]
    assert pool.kills == []
    assert info.id not in manager.registry
    assert [r.id for r in removed] == [info.id]


def test_terminate_unknown_id(manager: SpawnManager) -> None:
    err = refusal(manager.terminate_child_vsm("nope"), NotFound)
    assert err.details == {"id": "nope"}


def test_terminate_twice_answers_both(manager: SpawnManager, pool: FakePool, tree: Tree) -> None:
    info = tree.start(name="x")
    first = manager.terminate_child_vsm(info.id)
    second = manager.terminate_child_vsm(info.id)
    assert pool.kills == [(tree.pid(info.id), TERM)]  # signalled once
    tree.exit(info.id)
    assert first.result(timeout=0) == second.result(timeout=0) == [info.id]


def test_terminate_of_a_child_during_the_parents_terminate(
    manager: SpawnManager, tree: Tree
) -> None:
    root = tree.start(name="root")
    kid = tree.start(parent=root.id, name="kid")
    root_fut = manager.terminate_child_vsm(root.id)
    kid_fut = manager.terminate_child_vsm(kid.id)
    tree.exit(kid.id)
    assert kid_fut.result(timeout=0) == [kid.id]
    assert not root_fut.done()
    tree.exit(root.id)
    assert root.id in root_fut.result(timeout=0)
    assert len(manager.registry) == 0


def test_parents_terminate_lists_a_child_stopped_by_an_overlapping_terminate(
    manager: SpawnManager, tree: Tree
) -> None:
    root = tree.start(name="root")
    kid = tree.start(parent=root.id, name="kid")
    root_fut = manager.terminate_child_vsm(root.id)
    manager.terminate_child_vsm(kid.id)
    tree.exit(kid.id)
    tree.exit(root.id)
    assert root_fut.result(timeout=0) == [kid.id, root.id]


def test_terminate_of_a_child_is_answered_with_its_own_subtree_only(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(default_restart="temporary")
    tree = Tree(manager, pool)
    root = tree.start(name="root")
    first = tree.start(parent=root.id, name="first")
    second = tree.start(parent=root.id, name="second")
    tree.exit(root.id, code=1)  # the parent died on its own; its children live on
    root_fut = manager.terminate_child_vsm(root.id)
    second_fut = manager.terminate_child_vsm(second.id)
    tree.exit(first.id)
    tree.exit(second.id)
    assert root_fut.result(timeout=0) == [first.id, second.id, root.id]
    assert second_fut.result(timeout=0) == [second.id]


def test_terminate_with_a_dead_parent_and_live_children(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(default_restart="temporary")
    tree = Tree(manager, pool)
    root = tree.start(name="root")
    kid = tree.start(parent=root.id, name="kid")
    tree.exit(root.id, code=1)
    fut = manager.terminate_child_vsm(root.id)
    assert pool.kills == [(tree.pid(kid.id), TERM)]
    assert not fut.done()
    tree.exit(kid.id)
    assert fut.result(timeout=0) == [kid.id, root.id]
    assert len(manager.registry) == 0


# --- shutdown ---------------------------------------------------------------------------------


def test_shutdown(manager: SpawnManager, pool: FakePool, tree: Tree) -> None:
    r1 = tree.start(name="r1")
    k1 = tree.start(parent=r1.id, name="k1")
    r2 = tree.start(name="r2")
    futs = manager.shutdown()
    assert len(futs) == 2
    assert sorted(pool.kills) == sorted([(tree.pid(k1.id), TERM), (tree.pid(r2.id), TERM)])

    err = refusal(spawn(manager, name="late"), ShuttingDown)
    assert err.code == "SHUTTING_DOWN"
    refusal(spawn(manager, parent=r1.id, name="late"), ShuttingDown)

    tree.exit(k1.id)
    assert pool.kills[-1] == (tree.pid(r1.id), TERM)
    tree.exit(r1.id)
    tree.exit(r2.id)
    assert [f.result(timeout=0) for f in futs] == [[k1.id, r1.id], [r2.id]]
    assert len(manager.registry) == 0


def test_shutdown_with_nothing_running(manager: SpawnManager) -> None:
    assert manager.shutdown() == []
    assert manager.shutting_down
