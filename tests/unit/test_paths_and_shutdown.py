"""Paths stay unique bus addresses; a daemon shutdown stops everything, abandoners included."""

from __future__ import annotations

import signal

import pytest

from tests.unit.fakes import FakePool, Tree
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.errors import Conflict
from vsmd.protocol import Policy, SpawnConfig


def test_a_path_kept_by_an_abandoned_vsm_cannot_be_taken_again(
    manager: SpawnManager, tree: Tree
) -> None:
    top = tree.start(name="top")
    mid = tree.start(parent=top.id, name="mid")
    stay = tree.start(parent=mid.id, name="stay", policy=Policy(on_parent_exit="abandon"))
    manager.terminate_child_vsm(mid.id)
    tree.exit(mid.id, sig=signal.SIGTERM)
    assert manager.show(stay.id).path == "top.mid.stay"
    again = tree.start(parent=top.id, name="mid")  # the name is free again among siblings
    fut = manager.spawn_recursive_vsm(again.id, SpawnConfig(name="stay"))
    with pytest.raises(Conflict, match=r"path top\.mid\.stay is taken"):
        fut.result(0)


def test_shutdown_stops_abandoning_children_too(
    manager: SpawnManager, pool: FakePool, tree: Tree
) -> None:
    top = tree.start(name="top")
    stay = tree.start(parent=top.id, name="stay", policy=Policy(on_parent_exit="abandon"))
    futures = manager.shutdown()
    assert manager.show(stay.id).parent == top.id  # not re-parented: everything stops
    assert pool.kills[0] == (tree.pid(stay.id), signal.SIGTERM)  # leaves first
    tree.exit(stay.id, sig=signal.SIGTERM)
    tree.exit(top.id, sig=signal.SIGTERM)
    assert [f.result(0) for f in futures] == [[stay.id, top.id]]
