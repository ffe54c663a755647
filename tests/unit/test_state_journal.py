"""The daemon's replica of VSM states in its journal: one row per key, written as keys change,
read back after a restart, and journals that held each state whole still read."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from vsmd.daemon.journal import Journal
from vsmd.daemon.registry import Registry, VsmRecord
from vsmd.daemon.state_store import StateStore
from vsmd.state import Clock, Entry, Key, encode, to_bytes


def store(journal: Journal, *ids: str) -> StateStore:
    registry = Registry()
    for vsm_id in ids:
        registry.add(VsmRecord(vsm_id, vsm_id, None, vsm_id, 1, "noop", {}))
    return StateStore(registry, journal, lambda _key, _body: None, 1 << 20)


def delta(clock: Clock, **data: Any) -> dict[str, Any]:
    return encode({("data", k): Entry(v, clock.tick()) for k, v in data.items()})


def rows(journal_path: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(str(journal_path))
    try:
        return sorted(db.execute("SELECT id, section, key FROM state_entries").fetchall())
    finally:
        db.close()


def written_keys(journal: Journal, monkeypatch: Any) -> list[list[Key]]:
    """What each put_states call of the journal writes, as (section, key) per call."""
    calls: list[list[Key]] = []
    put = journal.put_states

    def spy(batch: list[tuple[str, str, str, bytes]]) -> None:
        calls.append([(s, k) for _i, s, k, _e in batch])
        put(batch)

    monkeypatch.setattr(journal, "put_states", spy)
    return calls


def test_only_the_keys_changed_since_the_last_write_are_written(
    journal: Journal, monkeypatch: Any
) -> None:
    s = store(journal, "a")
    rec, clock = s.registry.get("a"), Clock("a")
    calls = written_keys(journal, monkeypatch)
    s.on_state(rec, delta(clock, **{f"k{i}": i for i in range(500)}))
    s.write()
    s.on_state(rec, delta(clock, k7="new", extra=1))
    s.write()
    s.write()  # nothing changed: nothing written
    assert len(calls) == 2
    assert len(calls[0]) == 500
    assert sorted(calls[1]) == [("data", "extra"), ("data", "k7")]


def test_a_restarted_daemon_reads_every_key_back(journal_path: Path) -> None:
    first = Journal(journal_path)
    s = store(first, "a", "b")
    clock = Clock("a")
    s.on_state(s.registry.get("a"), delta(clock, x=1, y=[1, {"z": "é"}]))
    s.write()
    s.on_state(s.registry.get("a"), delta(clock, x=2))
    s.set_policy("b", {"max_children": 3})
    s.write()
    before = {i: dict(s.of(i).entries) for i in ("a", "b")}
    first.close()

    again = Journal(journal_path)
    try:
        restored = store(again, "a", "b")
        assert restored.load() == 2
        assert {i: restored.of(i).entries for i in ("a", "b")} == before
        assert restored.of("a").value("data", "x") == 2
        assert restored.of("b").value("policy", "max_children") == 3
    finally:
        again.close()


def test_a_forgotten_vsm_leaves_no_row(journal: Journal, journal_path: Path) -> None:
    s = store(journal, "a", "b")
    s.on_state(s.registry.get("a"), delta(Clock("a"), x=1))
    s.on_state(s.registry.get("b"), delta(Clock("b"), x=1))
    s.write()
    s.forget("a")
    journal.delete("a")
    assert rows(journal_path) == [("b", "data", "x")]


def test_a_state_journaled_whole_is_read_with_the_entries_written_since(
    journal: Journal, journal_path: Path
) -> None:
    """A journal of an earlier vsmd holds each state as one snapshot: it still restores, and a
    key written since comes back with its newer value."""
    clock = Clock("a")
    old = {("data", "x"): Entry(1, clock.tick()), ("data", "y"): Entry("kept", clock.tick())}
    db = sqlite3.connect(str(journal_path))
    db.execute("INSERT INTO states VALUES (?, ?)", ("a", to_bytes(old, 1 << 20)))
    db.commit()
    db.close()
    s = store(journal, "a")
    s.on_state(s.registry.get("a"), delta(clock, x=2))
    s.write()
    restored = store(journal, "a")
    assert restored.load() == 1
    assert restored.of("a").value("data", "x") == 2
    assert restored.of("a").value("data", "y") == "kept"
    journal.delete("a")  # the whole-state row goes with the VSM too
    assert store(journal, "a").load() == 0


def test_keys_not_journaled_while_the_journal_is_unwritable_are_written_once_it_is(
    journal: Journal, journal_path: Path
) -> None:
    s = store(journal, "a")
    rec, clock = s.registry.get("a"), Clock("a")
    answers: list[bytes] = []
    s.on_state(rec, delta(clock, x=1, y=2))
    s.on_flush(answers.append)
    journal._db.execute("PRAGMA query_only = ON")  # as a read-only state directory fails
    s.write()  # logged, kept for the next write; the flush is not answered yet
    assert answers == []
    assert rows(journal_path) == []
    s.on_state(rec, delta(clock, z=3))
    journal._db.execute("PRAGMA query_only = OFF")
    s.write()
    assert len(answers) == 1
    assert rows(journal_path) == [("a", "data", "x"), ("a", "data", "y"), ("a", "data", "z")]
