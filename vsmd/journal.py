"""The journal of desired VSMs, so a restarted daemon re-creates its tree.

SQLite in WAL mode: a committed spawn survives ``kill -9`` of the daemon (the WAL is in the
OS's hands before commit returns); synchronous=NORMAL trades only power-loss durability for a
spawn path without an fsync per VSM.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vsmd.errors import ConfigError

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
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the journal {path}: {exc}") from None
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM vsms").fetchone()[0]

    def put(self, e: Entry) -> None:
        self._seq += 1
        self._db.execute(
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
                self._seq,
            ),
        )

    def reparent(self, vsm_id: str, parent: str | None, depth: int) -> None:
        self._db.execute(
            "UPDATE vsms SET parent = ?, depth = ? WHERE id = ?", (parent, depth, vsm_id)
        )

    def delete(self, vsm_id: str) -> None:
        self._db.execute("DELETE FROM vsms WHERE id = ?", (vsm_id,))

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
        self._db.close()
