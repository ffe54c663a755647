"""Hierarchical budgets: descendants and memory, carved out of the nearest budgeted ancestor."""

from __future__ import annotations

from typing import Any

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakePool, Tree, events_of
from tests.unit.helpers import refusal, spawn
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.errors import QuotaExceeded
from vsmd.protocol import Policy


def refused(
    manager: SpawnManager, parent: str | None, policy: Policy | None = None
) -> QuotaExceeded:
    err = refusal(spawn(manager, parent=parent, policy=policy), QuotaExceeded)
    assert isinstance(err, QuotaExceeded)
    return err


def numbers(err: QuotaExceeded) -> dict[str, Any]:
    return {k: err.details[k] for k in ("limit", "owner", "used", "asked", "max")}


# --- descendants ------------------------------------------------------------------------------


def test_budget_descendants_caps_the_whole_subtree(
    manager: SpawnManager, pool: FakePool, tree: Tree
) -> None:
    parent = tree.start(name="p", policy=Policy(budget_descendants=3))
    kid = tree.start(parent=parent.id, name="k1")
    tree.start(parent=kid.id, name="g")  # grandchildren count too
    tree.start(parent=parent.id, name="k2")
    spawned = len(pool.spawned)
    err = refused(manager, parent.id)
    assert numbers(err) == {
        "limit": "budget_descendants",
        "owner": parent.id,
        "used": 3,
        "asked": 1,
        "max": 3,
    }
    assert "p is exhausted: 3 used + 1 asked > 3" in err.message
    # Deeper in the subtree the same budget applies.
    assert numbers(refused(manager, kid.id))["owner"] == parent.id
    assert len(pool.spawned) == spawned
    # Outside the subtree there is no budget.
    tree.start(name="free")


def test_a_child_with_its_own_budget_reserves_it_whole(manager: SpawnManager, tree: Tree) -> None:
    parent = tree.start(name="p", policy=Policy(budget_descendants=5))
    sub = tree.start(parent=parent.id, name="sub", policy=Policy(budget_descendants=2))
    # sub holds 2 + 1 of 5: another like it (3) does not fit, a plain child (1) does.
    err = refused(manager, parent.id, Policy(budget_descendants=2))
    assert (err.details["used"], err.details["asked"]) == (3, 3)
    tree.start(parent=parent.id, name="plain")
    # Inside sub, sub's own budget applies, not the parent's.
    tree.start(parent=sub.id, name="s1")
    tree.start(parent=sub.id, name="s2")
    err = refused(manager, sub.id)
    assert (err.details["owner"], err.details["used"], err.details["max"]) == (sub.id, 2, 2)


def test_a_zero_budget_allows_no_children(manager: SpawnManager, tree: Tree) -> None:
    leaf = tree.start(name="leaf", policy=Policy(budget_descendants=0))
    assert numbers(refused(manager, leaf.id))["max"] == 0


def test_terminate_returns_the_budget(manager: SpawnManager, tree: Tree) -> None:
    parent = tree.start(name="p", policy=Policy(budget_descendants=2))
    first = tree.start(parent=parent.id, name="a")
    tree.start(parent=parent.id, name="b")
    refused(manager, parent.id)
    manager.terminate_child_vsm(first.id)
    refused(manager, parent.id)  # held until it is gone
    tree.exit(first.id)
    tree.start(parent=parent.id, name="c")


def test_a_refusal_is_an_event(manager: SpawnManager, tree: Tree) -> None:
    parent = tree.start(name="p", policy=Policy(budget_descendants=0))
    err = refused(manager, parent.id)
    [event] = events_of(manager, "quota_exceeded")
    assert event.message == err.message
    assert event.vsm_id == parent.id
    assert event.details == err.details


# --- memory -----------------------------------------------------------------------------------


def test_budget_memory_caps_the_sum_of_memory_quotas(manager: SpawnManager, tree: Tree) -> None:
    parent = tree.start(name="p", policy=Policy(budget_memory_mb=100, memory_mb=20))
    tree.start(parent=parent.id, name="a", policy=Policy(memory_mb=50))
    err = refused(manager, parent.id, Policy(memory_mb=31))
    assert numbers(err) == {
        "limit": "budget_memory_mb",
        "owner": parent.id,
        "used": 70,  # the parent's own 20 and the child's 50
        "asked": 31,
        "max": 100,
    }
    tree.start(parent=parent.id, name="b", policy=Policy(memory_mb=30))  # exactly full
    refused(manager, parent.id, Policy(memory_mb=1))
    # Declaring no quota is no way around it: such a child costs the default share.
    err = refused(manager, parent.id)
    assert (err.details["used"], err.details["asked"]) == (100, 128)


def test_a_child_without_memory_mb_gets_the_default_share(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(default_memory_mb=30)
    tree = Tree(manager, pool)
    parent = tree.start(name="p", policy=Policy(budget_memory_mb=100))
    kid = tree.start(parent=parent.id, name="k")
    grandkid = tree.start(parent=kid.id, name="g")  # the budget holds deeper down too
    # The share is its quota: charged, enforced (it is in the spec the VSM is forked with).
    assert kid.policy["memory_mb"] == grandkid.policy["memory_mb"] == 30
    assert pool.spawned[-1].policy["memory_mb"] == 30
    tree.start(parent=parent.id, name="k2")
    err = refused(manager, parent.id)  # 3 x 30 held, 30 more does not fit in 100
    assert (err.details["used"], err.details["asked"], err.details["max"]) == (90, 30, 100)
    # Outside every memory budget nothing is added.
    assert "memory_mb" not in tree.start(name="free").policy


def test_default_memory_zero_refuses_a_child_without_memory_mb(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(default_memory_mb=0, memory_budget_mb=500)
    tree = Tree(manager, pool)
    err = refused(manager, None)
    assert err.details == {"limit": "memory_mb"}
    assert "must declare memory_mb" in err.message
    assert tree.start(name="ok", policy=Policy(memory_mb=10)).policy["memory_mb"] == 10


def test_a_child_with_a_memory_budget_holds_all_of_it(manager: SpawnManager, tree: Tree) -> None:
    parent = tree.start(name="p", policy=Policy(budget_memory_mb=100))
    sub = tree.start(parent=parent.id, name="sub", policy=Policy(budget_memory_mb=60))
    err = refused(manager, parent.id, Policy(memory_mb=41))
    assert (err.details["used"], err.details["asked"]) == (60, 41)
    tree.start(parent=sub.id, name="s1", policy=Policy(memory_mb=60))
    err = refused(manager, sub.id, Policy(memory_mb=1))
    assert (err.details["owner"], err.details["used"], err.details["max"]) == (sub.id, 60, 60)


def test_memory_quota_over_its_own_budget_is_refused(manager: SpawnManager, tree: Tree) -> None:
    err = refused(manager, None, Policy(memory_mb=101, budget_memory_mb=100))
    assert err.details == {"limit": "budget_memory_mb"}
    assert "memory_mb 101" in err.message
    assert "budget_memory_mb 100" in err.message
    tree.start(name="ok", policy=Policy(memory_mb=100, budget_memory_mb=100))


def test_daemon_memory_budget_at_the_top_level(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(memory_budget_mb=100)
    tree = Tree(manager, pool)
    tree.start(name="a", policy=Policy(memory_mb=40))
    budgeted = tree.start(name="b", policy=Policy(budget_memory_mb=50))
    err = refused(manager, None, Policy(memory_mb=11))
    assert numbers(err) == {
        "limit": "memory_budget_mb",
        "owner": None,
        "used": 90,
        "asked": 11,
        "max": 100,
    }
    assert "the daemon" in err.message
    tree.start(name="c", policy=Policy(memory_mb=10))
    # Under a budgeted VSM its own budget decides; the daemon's was charged when it started.
    tree.start(parent=budgeted.id, name="d", policy=Policy(memory_mb=50))


def test_vsms_without_memory_quotas_are_not_limited_without_a_budget(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(memory_budget_mb=0)
    tree = Tree(manager, pool)
    for i in range(5):
        tree.start(name=f"n{i}")
    assert len(manager.registry) == 5


def test_under_the_daemon_memory_budget_vsms_without_quotas_cost_the_share(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(memory_budget_mb=100, default_memory_mb=40)
    tree = Tree(manager, pool)
    tree.start(name="n0")
    tree.start(name="n1")
    err = refused(manager, None)
    assert numbers(err) == {
        "limit": "memory_budget_mb",
        "owner": None,
        "used": 80,
        "asked": 40,
        "max": 100,
    }
