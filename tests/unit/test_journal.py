"""The SQLite journal of desired VSMs, and the SpawnManager's restore from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, Tree, events_of, run_for
from tests.unit.helpers import refusal, spawn
from vsmd.daemon.journal import Entry, Journal
from vsmd.daemon.registry import Status
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers
from vsmd.errors import ConfigError, JournalUnavailable
from vsmd.protocol import Policy


def entry(vsm_id: str, parent: str | None, depth: int, **policy: object) -> Entry:
    return Entry(vsm_id, parent, vsm_id, vsm_id, depth, "noop", {"k": [1, "x"]}, dict(policy))


def ids(entries: list[Entry]) -> list[str]:
    return [e.id for e in entries]


def test_load_is_parents_first_then_in_put_order(journal: Journal) -> None:
    # Put out of order: a child before its parent, and two roots apart.
    journal.put(entry("r2", None, 1))
    journal.put(entry("c", "r1", 2))
    journal.put(entry("r1", None, 1))
    journal.put(entry("g", "c", 3))
    journal.put(entry("c2", "r2", 2))
    assert ids(journal.load()) == ["r2", "r1", "c", "c2", "g"]
    assert journal.count() == 5


def test_entries_round_trip(journal: Journal) -> None:
    original = entry("a", None, 1, restart="permanent", memory_mb=64)
    journal.put(original)
    assert journal.load() == [original]


def test_put_replaces_an_entry(journal: Journal) -> None:
    journal.put(entry("a", None, 1))
    journal.put(entry("b", None, 1))
    journal.put(Entry("a", None, "a", "a", 1, "tree", {}, {}))
    assert journal.count() == 2
    assert ids(journal.load()) == ["b", "a"]  # a replaced entry goes to the end
    assert journal.load()[1].agent == "tree"


def test_reparent_and_delete(journal: Journal) -> None:
    journal.put(entry("r", None, 1))
    journal.put(entry("a", "r", 2))
    journal.reparent("a", None, 1)
    journal.delete("r")
    journal.delete("never-there")
    [only] = journal.load()
    assert (only.id, only.parent, only.depth) == ("a", None, 1)


def test_survives_reopening(journal_path: Path) -> None:
    first = Journal(journal_path)
    first.put(entry("r", None, 1))
    first.put(entry("c", "r", 2))
    first.close()
    second = Journal(journal_path)
    try:
        assert ids(second.load()) == ["r", "c"]
        second.put(entry("r2", None, 1))  # its sequence continues after the old ones
        assert ids(second.load()) == ["r", "r2", "c"]
    finally:
        second.close()


def test_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        Journal(blocker / "journal.db")
    assert "cannot open the journal" in info.value.message


# --- through the SpawnManager -----------------------------------------------------------------


def test_spawn_journals_and_terminate_forgets(
    make_manager: MakeManager, pool: FakePool, journal: Journal
) -> None:
    manager = make_manager(journal=journal)
    tree = Tree(manager, pool)
    root = tree.start(name="r", policy=Policy(restart="permanent"))
    kid = tree.start(parent=root.id, name="k")
    [r, k] = journal.load()
    assert (r.id, r.parent, r.name, r.path, r.depth, r.agent) == (
        root.id,
        None,
        "r",
        "r",
        1,
        "noop",
    )
    assert r.policy == {"restart": "permanent"}
    assert (k.id, k.parent, k.path, k.depth) == (kid.id, root.id, "r.k", 2)
    manager.terminate_child_vsm(root.id)
    tree.exit(kid.id)
    assert journal.count() == 2  # forgotten with the records, when the whole subtree is gone
    tree.exit(root.id)
    assert journal.count() == 0


def test_a_failed_start_is_not_journaled(
    make_manager: MakeManager, pool: FakePool, journal: Journal
) -> None:
    manager = make_manager(journal=journal)
    spawn(manager, name="a")
    manager.on_spawn_failed(pool.last.vsm_id, "no")
    assert journal.count() == 0


def test_shutdown_keeps_the_journal(
    make_manager: MakeManager, pool: FakePool, journal: Journal
) -> None:
    manager = make_manager(journal=journal)
    tree = Tree(manager, pool)
    root = tree.start(name="r")
    kid = tree.start(parent=root.id, name="k")
    futs = manager.shutdown()
    tree.exit(kid.id)
    tree.exit(root.id)
    assert futs[0].result(timeout=0) == [kid.id, root.id]
    assert len(manager.registry) == 0
    assert ids(journal.load()) == [root.id, kid.id]


def build_and_shut_down(manager: SpawnManager, pool: FakePool) -> dict[str, str]:
    """r (transient) -> k (permanent), r -> t (temporary) -> tx, and a temporary root c."""
    tree = Tree(manager, pool)
    r = tree.start(name="r")
    k = tree.start(parent=r.id, name="k", policy=Policy(restart="permanent"))
    t = tree.start(parent=r.id, name="t", policy=Policy(restart="temporary"))
    tx = tree.start(parent=t.id, name="tx", policy=Policy(restart="permanent"))
    c = tree.start(name="c", policy=Policy(restart="temporary"))
    manager.shutdown()
    for info in (tx, k, t, r, c):
        tree.exit(info.id)
    return {i.path: i.id for i in (r, k, t, tx, c)}


def test_restore_recreates_the_lasting_vsms(
    make_manager: MakeManager, pool: FakePool, journal_path: Path
) -> None:
    first = Journal(journal_path)
    made = build_and_shut_down(make_manager(journal=first), pool)
    first.close()

    again = Journal(journal_path)
    try:
        manager = make_manager(journal=again)
        before = len(pool.spawned)
        assert manager.restore() == (2, 3)
        specs = pool.spawned[before:]
        assert [(s.vsm_id, s.path, s.parent_id, s.depth) for s in specs] == [
            (made["r"], "r", None, 1),
            (made["r.k"], "r.k", made["r"], 2),
        ]
        assert specs[1].policy == {"restart": "permanent"}
        assert manager.show(made["r"]).children == [made["r.k"]]
        assert manager.show(made["r"]).status == "starting"
        assert all(made[p] not in manager.registry for p in ("r.t", "r.t.tx", "c"))
        # Temporary VSMs and their orphans are gone from the journal too.
        assert ids(again.load()) == [made["r"], made["r.k"]]
        [event] = events_of(manager, "restored")
        assert event.details == {"restored": 2, "dropped": 3}
        assert "restored 2 VSMs" in event.message
        # Back after a daemon restart: "started", not a restart of the VSM itself.
        tree = Tree(manager, pool)
        tree.come_back(made["r"])
        assert manager.show(made["r"]).restarts == 0
        [started] = events_of(manager, "started")
        assert started.vsm_id == made["r"]
        assert events_of(manager, "restarted") == []
    finally:
        again.close()


def test_a_restored_vsm_that_dies_while_starting_is_restarted(
    make_manager: MakeManager, pool: FakePool, journal: Journal
) -> None:
    journal.put(Entry("a1", None, "a", "a", 1, "noop", {}, {}))
    manager = make_manager(journal=journal)
    manager.restore()
    manager.on_spawned("a1", 4000)
    manager.on_exited("a1", 4000, 3, None)
    # It ran before the daemon restarted: a crash, not a refused spawn.
    assert manager.registry.get("a1").status is Status.BACKOFF
    assert journal.count() == 1


def test_restore_drops_unknown_agents(make_manager: MakeManager, journal: Journal) -> None:
    journal.put(Entry("m1", None, "m", "m", 1, "martian", {}, {}))
    manager = make_manager(journal=journal)
    assert manager.restore() == (0, 1)
    assert journal.count() == 0


def test_restore_without_a_journal_or_entries(make_manager: MakeManager, journal: Journal) -> None:
    assert make_manager().restore() == (0, 0)
    manager = make_manager(journal=journal)
    assert manager.restore() == (0, 0)
    assert events_of(manager, "restored") == []


# --- a journal that cannot be written ---------------------------------------------------------


def read_only(journal: Journal, on: bool = True) -> None:
    """Make every write fail the way a read-only state directory does (SQLITE_READONLY)."""
    journal._db.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


def test_a_put_that_cannot_be_written_raises_journal_unavailable(
    journal: Journal, journal_path: Path
) -> None:
    read_only(journal)
    with pytest.raises(JournalUnavailable) as info:
        journal.put(entry("a", None, 1))
    err = info.value
    assert err.code == "JOURNAL_UNAVAILABLE"
    assert f"cannot write the journal {journal_path}: attempt to write a readonly database" in (
        err.message
    )
    assert err.details == {"journal": str(journal_path)}
    read_only(journal, False)
    journal.put(entry("a", None, 1))
    assert ids(journal.load()) == ["a"]


def test_failed_deletes_and_moves_are_replayed_before_the_next_write(journal: Journal) -> None:
    for e in (entry("r", None, 1), entry("a", "r", 2), entry("b", "r", 2), entry("c", "b", 3)):
        journal.put(e)
    read_only(journal)
    journal.reparent("a", None, 1)  # never raises: kept for later
    journal.delete("b")
    journal.reparent("c", "r", 2)
    journal.delete("c")  # a delete wins over an earlier move
    journal.reparent("c", None, 1)  # and over a later one: it does not come back
    assert journal.pending == 3
    assert ids(journal.load()) == ["r", "a", "b", "c"]  # unchanged meanwhile
    with pytest.raises(JournalUnavailable):
        journal.put(entry("n", None, 1))
    read_only(journal, False)
    journal.put(entry("n", None, 1))
    assert journal.pending == 0
    assert [(e.id, e.parent, e.depth) for e in journal.load()] == [
        ("r", None, 1),
        ("a", None, 1),
        ("n", None, 1),
    ]


def test_flush_replays_without_a_new_write(journal: Journal) -> None:
    journal.put(entry("a", None, 1))
    read_only(journal)
    journal.delete("a")
    assert journal.flush() is False
    assert journal.count() == 1
    read_only(journal, False)
    assert journal.flush() is True
    assert (journal.pending, journal.count()) == (0, 0)


def test_an_unwritable_journal_refuses_spawns_and_keeps_supervising(
    make_manager: MakeManager, pool: FakePool, journal: Journal, clock: FakeClock, timers: Timers
) -> None:
    manager = make_manager(journal=journal)
    tree = Tree(manager, pool)
    keep = tree.start(name="keep", policy=Policy(restart="permanent"))
    gone = tree.start(name="gone")
    read_only(journal)
    spawned = len(pool.spawned)
    err = refusal(spawn(manager, name="new"), JournalUnavailable)
    assert "cannot write the journal" in err.message
    assert len(pool.spawned) == spawned  # nothing was started
    assert [r.name for r in manager.registry.all()] == ["keep", "gone"]
    # A crash is still restarted, and a terminate still ends.
    tree.exit(keep.id, code=1)
    run_for(clock, timers, 60)
    assert pool.last.vsm_id == keep.id
    tree.come_back(keep.id)
    assert manager.show(keep.id).status == "running"
    fut = manager.terminate_child_vsm(gone.id)
    tree.exit(gone.id)
    assert fut.result(timeout=0) == [gone.id]
    assert ids(journal.load()) == [keep.id, gone.id]  # not written yet
    # Writable again: the next spawn is admitted, and the journal forgets what went meanwhile.
    read_only(journal, False)
    new = tree.start(name="new")
    assert ids(journal.load()) == [keep.id, new.id]
