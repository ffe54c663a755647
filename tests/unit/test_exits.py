"""VSMs that exit on their own, judged by their restart policy; stale and unknown reports."""

from __future__ import annotations

import signal

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Tree, events_of
from vsmd.daemon.registry import VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers

KILL = signal.SIGKILL


# --- exits on their own -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "sig", "expected_status", "last_exit"),
    [
        (0, None, "exited", "exit code 0"),
        (3, None, "failed", "exit code 3"),
        (None, signal.SIGKILL, "failed", "killed by SIGKILL"),
        (None, 200, "failed", "killed by signal 200"),
    ],
)
def test_temporary_vsm_exiting_on_its_own_stays_down(
    make_manager: MakeManager,
    pool: FakePool,
    timers: Timers,
    clock: FakeClock,
    removed: list[VsmRecord],
    code: int | None,
    sig: int | None,
    expected_status: str,
    last_exit: str,
) -> None:
    manager = make_manager(default_restart="temporary")
    tree = Tree(manager, pool)
    info = tree.start(name="alpha")
    tree.exit(info.id, code=code, sig=sig)
    after = manager.show(info.id)  # still listed
    assert after.status == expected_status
    assert after.exit_code == code
    assert after.pid is None
    assert after.last_exit == last_exit
    assert after.last_reason == f"exited on its own ({last_exit})"
    assert manager.registry.get(info.id).exit_signal == sig
    assert removed == []
    [event] = events_of(manager, "exited")
    assert event.details == {"exit": last_exit}
    assert "keeps it down" in event.message
    clock.advance(1000.0)
    timers.run_due()
    assert len(pool.spawned) == 1  # never restarted
    assert after.restarts == 0


@pytest.mark.parametrize(
    ("code", "sig", "expected_status"),
    [
        (0, None, "exited"),
        (3, None, "backoff"),
        (None, signal.SIGKILL, "backoff"),
        (None, 200, "backoff"),
    ],
)
def test_default_policy_is_transient(
    manager: SpawnManager,
    tree: Tree,
    code: int | None,
    sig: int | None,
    expected_status: str,
) -> None:
    assert manager.config.default_restart == "transient"
    info = tree.start(name="alpha")
    tree.exit(info.id, code=code, sig=sig)
    after = manager.show(info.id)
    assert after.status == expected_status
    assert (after.next_restart is not None) == (expected_status == "backoff")


def test_stale_exit_with_another_pid_is_ignored(manager: SpawnManager, tree: Tree) -> None:
    info = tree.start(name="alpha")
    pid = tree.pid(info.id)
    manager.on_exited(info.id, pid + 1, 1, None)
    after = manager.show(info.id)
    assert after.status == "running"
    assert after.pid == pid
    assert after.last_exit is None


def test_events_for_unknown_ids_are_ignored(manager: SpawnManager, pool: FakePool) -> None:
    manager.on_ready("ghost", 1)
    manager.on_spawn_failed("ghost", "x")
    manager.on_exited("ghost", 1, 0, None)
    manager.on_failure_report("ghost", "x")
    assert len(manager.registry) == 0
    assert pool.kills == []


def test_a_pid_for_an_unknown_id_is_killed(manager: SpawnManager, pool: FakePool) -> None:
    manager.on_spawned("ghost", 1)  # a process no record owns: it must not leak
    assert len(manager.registry) == 0
    assert pool.kills == [(1, KILL)]


def test_second_ready_is_ignored(manager: SpawnManager, tree: Tree) -> None:
    info = tree.start(name="alpha")
    manager.on_ready(info.id, 99999)
    assert manager.show(info.id) == info
