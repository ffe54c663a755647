"""The journal of desired VSMs, so a restarted daemon re-creates its tree.

SQLite in WAL mode: a committed spawn survives ``kill -9`` of the daemon (the WAL is in the
OS's hands before commit returns); synchronous=NORMAL trades only power-loss durability for a
spawn path without an fsync per VSM.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vsmd.errors import ConfigError, JournalUnavailable

log = logging.getLogger("vsmd.daemon.journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vsms (
    id TEXT PRIMARY KEY,
    parent TEXT,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    depth INTEGER NOT NULL,
    agent TEXT NOT NULL,
    config BLOB NOT NULL,
    policy BLOB NOT NULL,
    seq INTEGER NOT NULL
)
"""


# The last synced state of each VSM, one row per key (a vsmd.state entry), written in batches:
# a VSM that changes a few keys of many costs the rows of those few.
_STATE_ENTRIES = """
CREATE TABLE IF NOT EXISTS state_entries (
    id TEXT NOT NULL,
    section TEXT NOT NULL,
    key TEXT NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (id, section, key)
) WITHOUT ROWID
"""
# Journals written before held each state whole (a vsmd.state snapshot): still read, never
# written; a VSM's row goes with the VSM.
_STATES = "CREATE TABLE IF NOT EXISTS states (id TEXT PRIMARY KEY, snapshot BLOB NOT NULL)"
StateRows = list[tuple[str, str, str, bytes]]  # (VSM id, section, key, entry)


@dataclass(frozen=True)
class Entry:
    id: str
    parent: str | None
    name: str
    path: str
    depth: int
    agent: str
    config: dict[str, Any]
    policy: dict[str, Any]


class Journal:
    """The desired tree on disk.

    A write that fails (disk full, read-only state directory) does not stop the daemon: ``put``
    raises :class:`JournalUnavailable`, so the spawn it belongs to is refused, while ``delete``
    and ``reparent`` are kept in memory and replayed before the next write, or by ``flush``.
    Until then the file still lists VSMs that are gone or have moved.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute(_STATES)
            self._db.execute(_STATE_ENTRIES)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the journal {path}: {exc}") from None
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM vsms").fetchone()[0]
        # Writes that failed, by VSM id, replayed in order: None deletes, (parent, depth) moves.
        self._pending: dict[str, tuple[str | None, int] | None] = {}
        self._failing = False

    @property
    def pending(self) -> int:
        """How many deletes and re-parents wait for the journal to be writable again."""
        return len(self._pending)

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        self._run(lambda: self._db.execute(sql, args))

    def _run(self, op: Callable[[], object]) -> None:
        try:
            op()
        except (OSError, sqlite3.Error) as exc:
            if not self._failing:
                log.error("cannot write the journal %s: %s; refusing new VSMs", self.path, exc)
            self._failing = True
            raise JournalUnavailable(
                f"cannot write the journal {self.path}: {exc}; no new VSMs until it can be "
                "written again (the running ones are still supervised)",
                journal=str(self.path),
            ) from None
        if self._failing:
            log.info("the journal %s can be written again; admitting new VSMs", self.path)
            self._failing = False

    def flush(self) -> bool:
        """Replay the deletes and re-parents that failed; True once none is left."""
        try:
            self._replay()
        except JournalUnavailable:
            return False
        return True

    def _replay(self) -> None:
        for vsm_id, move in list(self._pending.items()):
            if move is None:
                self._write("DELETE FROM vsms WHERE id = ?", (vsm_id,))
                self._write("DELETE FROM states WHERE id = ?", (vsm_id,))
                self._write("DELETE FROM state_entries WHERE id = ?", (vsm_id,))
            else:
                self._write("UPDATE vsms SET parent = ?, depth = ? WHERE id = ?", (*move, vsm_id))
            del self._pending[vsm_id]

    def put(self, e: Entry) -> None:
        """Record a VSM; raises JournalUnavailable when the journal cannot be written."""
        self._replay()  # what failed before goes first: the journal must not reorder history
        self._write(
            "INSERT OR REPLACE INTO vsms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.id,
                e.parent,
                e.name,
                e.path,
                e.depth,
                e.agent,
                orjson.dumps(e.config),
                orjson.dumps(e.policy),
                self._seq + 1,
            ),
        )
        self._seq += 1

    def reparent(self, vsm_id: str, parent: str | None, depth: int) -> None:
        """Never raises: a move that cannot be written now is replayed later."""
        if vsm_id in self._pending and self._pending[vsm_id] is None:
            return  # already deleted: moving it would not bring it back
        self._pending[vsm_id] = (parent, depth)
        self.flush()

    def delete(self, vsm_id: str) -> None:
        """Never raises: a delete that cannot be written now is replayed later."""
        self._pending[vsm_id] = None  # supersedes a pending move
        self.flush()

    def put_states(self, rows: StateRows) -> None:
        """Record changed state entries in one transaction; raises JournalUnavailable."""
        self._replay()
        self._write("BEGIN", ())
        try:
            sql = "INSERT OR REPLACE INTO state_entries VALUES (?, ?, ?, ?)"
            self._run(lambda: self._db.executemany(sql, rows))
            self._write("COMMIT", ())
        except JournalUnavailable:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def load_states(self) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
        """Each VSM's journaled state: the whole-state snapshots a journal of before holds,
        and the entries, by VSM id."""
        snapshots = {i: bytes(s) for i, s in self._db.execute("SELECT id, snapshot FROM states")}
        entries: dict[str, list[bytes]] = {}
        for vsm_id, entry in self._db.execute("SELECT id, entry FROM state_entries"):
            entries.setdefault(vsm_id, []).append(bytes(entry))
        return snapshots, entries

    def load(self) -> list[Entry]:
        """Parents before children."""
        rows = self._db.execute(
            "SELECT id, parent, name, path, depth, agent, config, policy FROM vsms "
            "ORDER BY depth, seq"
        ).fetchall()
        return [
            Entry(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]), orjson.loads(r[7]))
            for r in rows
        ]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vsms").fetchone()[0])

    def close(self) -> None:
        if not self.flush():
            log.error(
                "the journal %s still lists %d VSMs that are gone or moved: a restart "
                "restores them as they were",
                self.path,
                self.pending,
            )
        self._db.close()


def journal_path(state_dir: Path, namespace: str) -> Path:
    return state_dir / f"journal-{namespace}.db"


def journaled_ids(state_dir: Path, namespace: str) -> list[str]:
    """The VSMs a daemon's journal holds, if it has one. A worker's task queue is named by its
    id and outlives its daemon's stop by design: `vsmd namespace remove` finds it this way."""
    path = journal_path(state_dir, namespace)
    if not path.exists():
        return []
    journal = Journal(path)
    try:
        return [e.id for e in journal.load()]
    finally:
        journal.close()
