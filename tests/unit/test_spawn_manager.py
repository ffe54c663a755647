"""SpawnManager on a fake pool and a fake clock, driven as the fork server and VSMs would:
spawning, admission limits, start failures, exits and listing (terminate: test_terminate.py)."""

from __future__ import annotations

import signal

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Tree, events_of
from tests.unit.helpers import refusal, spawn, status
from vsmd.agents import AgentRegistry, NoopAgent
from vsmd.daemon.registry import Status, VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers
from vsmd.errors import (
    Conflict,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    SpawnError,
)
from vsmd.protocol import VsmInfo
from vsmd.spec import EXIT_BROKER, EXIT_REASONS

TERM, KILL = signal.SIGTERM, signal.SIGKILL


# --- spawning ---------------------------------------------------------------------------------


def test_spawn_resolves_only_after_ready(
    manager: SpawnManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    fut = spawn(manager, name="alpha")
    assert not fut.done()
    assert len(pool.spawned) == 1
    spec = pool.last
    assert len(spec.vsm_id) == 12
    rec = manager.registry.get(spec.vsm_id)
    assert rec.status is Status.STARTING
    assert rec.forking

    manager.on_spawned(spec.vsm_id, 4242)
    assert not fut.done()
    assert rec.pid == 4242
    assert not rec.forking

    manager.on_ready(spec.vsm_id, 4242)
    info = fut.result(timeout=0)
    assert info.id == spec.vsm_id
    assert info.status == "running"
    assert info.pid == 4242
    assert info.started_at is not None
    assert info.name == info.path == "alpha"

    # The spawn deadline was cancelled: nothing happens when it passes.
    clock.advance(1000.0)
    timers.run_due()
    assert pool.kills == []
    assert status(manager, spec.vsm_id) is Status.RUNNING


def test_spec_carries_the_settings(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(
        namespace="ns1",
        broker_url="amqp://b/",
        heartbeat=7,
        max_message_bytes=1000,
        agent_modules=("m.agents",),
    )
    spawn(manager, name="alpha", color="red")
    spec = pool.last
    assert spec.namespace == "ns1"
    assert spec.broker_url == "amqp://b/"
    assert spec.heartbeat == 7
    assert spec.max_message_bytes == 1000
    assert spec.agent_modules == ("m.agents",)
    assert spec.config == {"color": "red"}
    assert spec.agent == "noop"


def test_depth_path_and_parent(manager: SpawnManager, pool: FakePool, tree: Tree) -> None:
    top = tree.start(name="alpha")
    assert (top.depth, top.path, top.parent) == (1, "alpha", None)
    assert pool.spawned[0].parent_id is None

    child = tree.start(parent=top.id, name="beta")
    assert (child.depth, child.path, child.parent) == (2, "alpha.beta", top.id)
    assert pool.spawned[1].parent_id == top.id
    assert pool.spawned[1].path == "alpha.beta"
    assert pool.spawned[1].depth == 2

    grandchild = tree.start(parent=child.id, name="gamma")
    assert (grandchild.depth, grandchild.path) == (3, "alpha.beta.gamma")
    assert manager.show(top.id).children == [child.id]
    assert manager.show(child.id).children == [grandchild.id]


def test_unnamed_vsm_is_named_after_its_id(tree: Tree) -> None:
    info = tree.start()
    assert info.name == info.id
    assert info.path == info.id


def test_max_depth(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(max_depth=2)
    tree = Tree(manager, pool)
    top = tree.start(name="a")
    child = tree.start(parent=top.id, name="b")
    fut = spawn(manager, parent=child.id, name="c")
    err = refusal(fut, QuotaExceeded)
    assert err.code == "QUOTA_EXCEEDED"
    assert err.details == {"limit": "max_depth", "value": 3, "max": 2}
    assert len(pool.spawned) == 2
    assert len(manager.registry) == 2


def test_max_total_counts_live_vsms(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(max_total=2)
    tree = Tree(manager, pool)
    first = tree.start(name="a")
    spawn(manager, name="b")  # starting counts as live
    err = refusal(spawn(manager, name="c"), QuotaExceeded)
    assert err.details == {"limit": "max_total", "value": 2, "max": 2}
    assert len(pool.spawned) == 2

    tree.exit(first.id, code=0)  # exited: still listed, no longer live
    assert not spawn(manager, name="c").done()
    assert len(pool.spawned) == 3


def test_max_children(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(max_children=2)
    tree = Tree(manager, pool)
    top = tree.start(name="top")
    tree.start(parent=top.id, name="c1")
    tree.start(parent=top.id, name="c2")
    err = refusal(spawn(manager, parent=top.id, name="c3"), QuotaExceeded)
    assert err.details == {"limit": "max_children", "value": 2, "max": 2}
    assert len(pool.spawned) == 3
    # The limit is per parent.
    assert not spawn(manager, name="other").done()


def test_unknown_agent(manager: SpawnManager, pool: FakePool) -> None:
    err = refusal(spawn(manager, name="a", agent="martian"), NotFound)
    assert "'martian'" in err.message
    assert "noop" in err.message
    assert pool.spawned == []
    assert len(manager.registry) == 0


def test_registered_agent_is_accepted(
    manager: SpawnManager, pool: FakePool, agents: AgentRegistry
) -> None:
    agents.register("worker", NoopAgent)
    assert not spawn(manager, name="a", agent="worker").done()
    assert pool.last.agent == "worker"


def test_duplicate_sibling_name(manager: SpawnManager, pool: FakePool, tree: Tree) -> None:
    top = tree.start(name="alpha")
    refusal(spawn(manager, name="alpha"), Conflict)
    child = tree.start(parent=top.id, name="beta")
    err = refusal(spawn(manager, parent=top.id, name="beta"), Conflict)
    assert "'beta'" in err.message
    # The same name is fine under another parent.
    grandchild = tree.start(parent=child.id, name="beta")
    assert grandchild.path == "alpha.beta.beta"
    assert len(pool.spawned) == 3


@pytest.mark.parametrize("name", ["Bad Name", "UPPER", "dots.in.name", "a/b", "x" * 33, "é"])
def test_bad_name(manager: SpawnManager, pool: FakePool, name: str) -> None:
    err = refusal(spawn(manager, name=name), ProtocolError)
    assert err.code == "BAD_REQUEST"
    assert err.details == {"field": "name"}
    assert pool.spawned == []
    assert len(manager.registry) == 0


def test_parent_not_running(manager: SpawnManager, pool: FakePool) -> None:
    spawn(manager, name="parent")
    parent_id = pool.last.vsm_id  # still starting
    err = refusal(spawn(manager, parent=parent_id, name="kid"), Conflict)
    assert "starting" in err.message
    assert len(pool.spawned) == 1


@pytest.mark.parametrize(("code", "state"), [(0, "exited"), (1, "failed")])
def test_exited_parent_cannot_have_children(
    make_manager: MakeManager, pool: FakePool, code: int, state: str
) -> None:
    manager = make_manager(default_restart="temporary")
    tree = Tree(manager, pool)
    top = tree.start(name="top")
    tree.exit(top.id, code=code)
    err = refusal(spawn(manager, parent=top.id, name="kid"), Conflict)
    assert state in err.message


def test_parent_waiting_to_restart_cannot_have_children(manager: SpawnManager, tree: Tree) -> None:
    top = tree.start(name="top")
    tree.exit(top.id, code=1)  # transient by default: it comes back after a delay
    assert status(manager, top.id) is Status.BACKOFF
    err = refusal(spawn(manager, parent=top.id, name="kid"), Conflict)
    assert "backoff" in err.message


def test_unknown_parent(manager: SpawnManager) -> None:
    refusal(spawn(manager, parent="nosuchid", name="kid"), NotFound)


def test_exit_during_start(manager: SpawnManager, pool: FakePool, removed: list[VsmRecord]) -> None:
    fut = spawn(manager, name="alpha")
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 500)
    manager.on_exited(vsm_id, 500, EXIT_BROKER, None)
    err = refusal(fut, SpawnError)
    assert err.code == "SPAWN_FAILED"
    assert "exited during start" in err.message
    assert EXIT_REASONS[EXIT_BROKER] in err.message
    assert err.details == {"exit": f"exit code {EXIT_BROKER}"}
    assert vsm_id not in manager.registry
    assert [r.id for r in removed] == [vsm_id]
    assert pool.kills == []  # it is already gone
    # The name is free again.
    assert not spawn(manager, name="alpha").done()


def test_killed_during_start(manager: SpawnManager, pool: FakePool) -> None:
    fut = spawn(manager, name="alpha")
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 500)
    manager.on_exited(vsm_id, 500, None, signal.SIGSEGV)
    err = refusal(fut, SpawnError)
    assert "killed by SIGSEGV" in err.message


def test_fork_failure(manager: SpawnManager, pool: FakePool, removed: list[VsmRecord]) -> None:
    fut = spawn(manager, name="alpha")
    vsm_id = pool.last.vsm_id
    manager.on_spawn_failed(vsm_id, "fork failed: Resource temporarily unavailable")
    err = refusal(fut, SpawnError)
    assert "Resource temporarily unavailable" in err.message
    assert "alpha" in err.message
    assert vsm_id not in manager.registry
    assert [r.id for r in removed] == [vsm_id]
    assert pool.kills == []


def test_spawn_timeout_kills_the_process(
    manager: SpawnManager,
    pool: FakePool,
    timers: Timers,
    clock: FakeClock,
    removed: list[VsmRecord],
) -> None:
    fut = spawn(manager, name="slow")
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 777)
    clock.advance(9.999)
    timers.run_due()
    assert not fut.done()
    clock.advance(0.001)
    timers.run_due()
    err = refusal(fut, SpawnError)
    assert "did not report ready within 10 s" in err.message
    assert pool.kills == [(777, KILL)]
    assert vsm_id not in manager.registry
    assert [r.id for r in removed] == [vsm_id]
    # Its exit and a late "ready" are both ignored.
    manager.on_exited(vsm_id, 777, None, KILL)
    manager.on_ready(vsm_id, 777)
    assert vsm_id not in manager.registry


def test_spawn_timeout_before_the_fork_is_reported(
    manager: SpawnManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    fut = spawn(manager, name="slow")
    clock.advance(10.0)
    timers.run_due()
    refusal(fut, SpawnError)
    assert pool.kills == []  # no pid to kill
    assert len(manager.registry) == 0


def test_late_spawned_after_timeout_is_killed(
    manager: SpawnManager, pool: FakePool, timers: Timers, clock: FakeClock
) -> None:
    fut = spawn(manager, name="slow")
    vsm_id = pool.last.vsm_id
    clock.advance(10.0)
    timers.run_due()
    refusal(fut, SpawnError)
    manager.on_spawned(vsm_id, 888)  # the fork server was slow, the process exists now
    assert pool.kills == [(888, KILL)]


def test_pool_failure_leaves_no_record(
    manager: SpawnManager, pool: FakePool, removed: list[VsmRecord]
) -> None:
    pool.spawn_error = SpawnError("the fork server is gone")
    fut = spawn(manager, name="alpha")  # the error is the future's, it does not escape
    err = refusal(fut, SpawnError)
    assert "the fork server is gone" in err.message
    assert len(manager.registry) == 0
    assert len(removed) == 1
    assert [e.message for e in events_of(manager, "spawn_failed")] == [err.message]
    pool.spawn_error = None
    assert not spawn(manager, name="alpha").done()  # not a Conflict with a ghost


# --- listing ----------------------------------------------------------------------------------


def test_list_child_vsms(manager: SpawnManager, tree: Tree) -> None:
    root = tree.start(name="root")
    kid = tree.start(parent=root.id, name="kid")
    grandkid = tree.start(parent=kid.id, name="gk")
    other = tree.start(name="other")

    def ids(infos: list[VsmInfo]) -> list[str]:
        return [i.id for i in infos]

    assert ids(manager.list_child_vsms()) == [root.id, kid.id, grandkid.id, other.id]
    assert ids(manager.list_child_vsms(None, recursive=False)) == [root.id, other.id]
    assert ids(manager.list_child_vsms(root.id)) == [kid.id, grandkid.id]
    assert ids(manager.list_child_vsms(root.id, recursive=False)) == [kid.id]
    with pytest.raises(NotFound):
        manager.list_child_vsms("nope")
    with pytest.raises(NotFound):
        manager.show("nope")
