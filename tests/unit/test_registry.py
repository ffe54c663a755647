"""The registry: the one transition function and the tree operations."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from vsmd.daemon.registry import Registry, Status, VsmRecord, transition
from vsmd.errors import NotFound
from vsmd.protocol import Policy

S = Status

# The lifecycle, written out independently of the code under test.
ALLOWED: dict[Status, set[Status]] = {
    S.STARTING: {S.RUNNING, S.FAILED, S.STOPPING, S.BACKOFF, S.EXITED},
    S.RUNNING: {S.STOPPING, S.EXITED, S.FAILED, S.BACKOFF},
    # Waiting out a restart delay: the delay ends, a terminate, or intensity exceeded.
    S.BACKOFF: {S.STARTING, S.STOPPING, S.FAILED},
    S.STOPPING: {S.EXITED},
    S.EXITED: {S.STARTING, S.STOPPING, S.BACKOFF},
    S.FAILED: {S.STARTING, S.STOPPING, S.BACKOFF},
}
ALL_PAIRS = list(itertools.product(Status, Status))


@pytest.mark.parametrize(
    ("current", "new"), [p for p in ALL_PAIRS if p[1] in ALLOWED[p[0]]], ids=str
)
def test_allowed_transitions(current: Status, new: Status) -> None:
    assert transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"), [p for p in ALL_PAIRS if p[1] not in ALLOWED[p[0]]], ids=str
)
def test_illegal_transitions_raise(current: Status, new: Status) -> None:
    with pytest.raises(AssertionError, match="illegal VSM state change"):
        transition(current, new)


def test_exited_to_running_is_illegal_and_leaves_the_record_alone() -> None:
    rec = record("a", status=S.EXITED)
    with pytest.raises(AssertionError):
        rec.set_status(S.RUNNING)
    assert rec.status is S.EXITED


def test_set_status_follows_an_edge() -> None:
    rec = record("a", status=S.STARTING)
    rec.set_status(S.RUNNING)
    assert rec.status is S.RUNNING


def record(
    vsm_id: str, parent: str | None = None, name: str | None = None, status: Status = S.RUNNING
) -> VsmRecord:
    return VsmRecord(
        id=vsm_id,
        name=name or vsm_id,
        parent=parent,
        path=vsm_id,
        depth=1,
        agent="noop",
        config={},
        status=status,
    )


@pytest.fixture
def forest() -> Registry:
    """r1 -> (a -> (a1, a2), b); r2."""
    reg = Registry()
    for rec in (
        record("r1"),
        record("a", "r1"),
        record("a1", "a"),
        record("a2", "a"),
        record("b", "r1"),
        record("r2"),
    ):
        reg.add(rec)
    return reg


def ids(recs: list[VsmRecord]) -> list[str]:
    return [r.id for r in recs]


def test_add_links_children(forest: Registry) -> None:
    assert len(forest) == 6
    assert "a1" in forest
    assert "zz" not in forest
    assert forest.get("r1").children == ["a", "b"]
    assert forest.get("a").children == ["a1", "a2"]
    assert forest.get("r2").children == []
    assert ids(forest.roots()) == ["r1", "r2"]


def test_subtree_is_post_order_leaves_first(forest: Registry) -> None:
    assert ids(forest.subtree("r1")) == ["a1", "a2", "a", "b", "r1"]
    assert ids(forest.subtree("a")) == ["a1", "a2", "a"]
    assert ids(forest.subtree("a2")) == ["a2"]
    assert ids(forest.subtree("r2")) == ["r2"]


def test_descendants_is_pre_order(forest: Registry) -> None:
    assert ids(forest.descendants(None)) == ["r1", "a", "a1", "a2", "b", "r2"]
    assert ids(forest.descendants("r1")) == ["a", "a1", "a2", "b"]
    assert ids(forest.descendants("a")) == ["a1", "a2"]
    assert forest.descendants("a1") == []


def test_remove_unlinks_from_parent(forest: Registry) -> None:
    rec = forest.remove("a2")
    assert rec.id == "a2"
    assert "a2" not in forest
    assert forest.find("a2") is None
    assert forest.get("a").children == ["a1"]
    assert len(forest) == 5
    forest.remove("r2")
    assert ids(forest.roots()) == ["r1"]


def test_sibling_named(forest: Registry) -> None:
    assert forest.sibling_named(None, "r2") is forest.get("r2")
    assert forest.sibling_named("r1", "b") is forest.get("b")
    assert forest.sibling_named("a", "a2") is forest.get("a2")
    assert forest.sibling_named("a", "b") is None  # b is a's sibling, not its child
    assert forest.sibling_named(None, "a") is None  # a is not at the top level
    with pytest.raises(NotFound):
        forest.sibling_named("nope", "a")


def test_live_count(forest: Registry) -> None:
    assert forest.live_count() == 6
    forest.get("a1").set_status(S.BACKOFF)  # waiting to restart: still counted
    forest.get("a2").set_status(S.STOPPING)
    forest.get("b").set_status(S.EXITED)
    forest.get("r2").set_status(S.FAILED)
    assert forest.live_count() == 4
    forest.get("r2").set_status(S.STARTING)  # restarted
    assert forest.live_count() == 5
    gone = forest.remove("a2")
    assert forest.live_count() == 4
    gone.set_status(S.EXITED)  # a record that left the registry is no longer counted
    assert forest.live_count() == 4
    forest.add(record("c", status=S.EXITED))
    assert forest.live_count() == 4


def test_the_indexes_agree_with_a_scan_after_every_change(forest: Registry) -> None:
    def check() -> None:
        recs = list(forest.all())
        assert ids(forest.roots()) == [r.id for r in recs if r.parent is None]
        assert forest.live_count() == sum(1 for r in recs if r.live)
        for r in recs:
            assert forest.sibling_named(r.parent, r.name) is not None

    check()
    forest.reparent("a1", None)  # abandoned: a top-level VSM now, in registry order
    assert ids(forest.roots()) == ["r1", "a1", "r2"]
    assert forest.sibling_named(None, "a1") is forest.get("a1")
    assert forest.sibling_named("a", "a1") is None
    check()
    forest.reparent("a1", "r2")
    assert forest.sibling_named("r2", "a1") is forest.get("a1")
    assert forest.sibling_named(None, "a1") is None
    check()
    forest.add(record("dup", "r2", name="a1"))  # a name an abandoned VSM brought along
    forest.remove("a1")
    assert forest.sibling_named("r2", "a1") is forest.get("dup")
    forest.remove("dup")
    assert forest.sibling_named("r2", "a1") is None
    check()


def test_get_unknown_raises_not_found(forest: Registry) -> None:
    with pytest.raises(NotFound) as info:
        forest.get("missing")
    assert info.value.code == "NOT_FOUND"
    assert info.value.details == {"id": "missing"}
    assert forest.find("missing") is None
    with pytest.raises(NotFound):
        forest.subtree("missing")
    with pytest.raises(NotFound):
        forest.descendants("missing")


def test_get_cuts_long_ids() -> None:
    with pytest.raises(NotFound) as info:
        Registry().get("x" * 1000)
    assert info.value.details == {"id": "x" * 64}


def test_all_is_a_snapshot(forest: Registry) -> None:
    seen = []
    for rec in forest.all():
        seen.append(rec.id)
        if rec.id == "r2":
            forest.remove("r2")  # must not break the iteration
    assert sorted(seen) == ["a", "a1", "a2", "b", "r1", "r2"]


def test_record_properties_and_info() -> None:
    rec = record("x", status=S.STARTING)
    assert rec.live
    assert not rec.has_process
    rec.forking = True
    assert rec.has_process
    rec.forking, rec.pid = False, 77
    assert rec.has_process
    rec.children.append("c1")
    info = rec.info()
    assert info.status == "starting"
    assert info.pid == 77
    assert info.children == ["c1"]
    assert info.children is not rec.children
    rec.status = S.FAILED
    assert not rec.live


def test_info_dict_is_what_info_gives_as_a_dict() -> None:
    rec = record("r1")
    rec.children = ["c1"]
    rec.metrics, rec.rates = {"rss_mb": 60.3, "health": "ok"}, {"sent_per_s": 1.5}
    rec.unreachable_since = 1.0  # shown as "unreachable", in both
    assert rec.info_dict() == rec.info().to_dict()
    assert rec.info_dict()["status"] == "unreachable"
    rec.info_dict()["children"].append("c2")  # a copy: the reply cannot change the record
    assert rec.children == ["c1"]


def test_the_listed_policy_follows_the_record_and_is_a_copy() -> None:
    rec = record("r1")
    rec.policy = Policy(memory_mb=64)
    assert rec.info_dict()["policy"] == {"memory_mb": 64}
    rec.info_dict()["policy"]["memory_mb"] = 1  # the reply's dict, not the one kept
    assert rec.info_dict()["policy"] == {"memory_mb": 64}
    rec.policy = dataclasses.replace(rec.policy, max_children=3)  # policies are replaced whole
    assert rec.info_dict()["policy"] == {"memory_mb": 64, "max_children": 3}
    assert rec.info().to_dict()["policy"] == rec.info_dict()["policy"]
