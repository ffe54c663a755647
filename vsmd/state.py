"""VSM state as a replicated map that converges: the wire format both sides use, no I/O.

A state is a map ``(section, key) -> Entry``. Sections: ``identity`` (who the VSM is),
``policy`` (set from above, see :func:`effective_policy`), ``metrics`` (health, counters,
gauges, the subtree summary) and ``data`` (the agent's own key-values). Every entry carries a
:class:`Version` from a hybrid logical clock with the writer's id as tie-break, and merging keeps
the higher version per key. So a duplicate, stale or reordered update changes nothing, and
replicas that have seen the same updates hold the same state in any order (an LWW map).
Deletes are tombstones, so a late update cannot resurrect a deleted key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vsmd.errors import ProtocolError, TooLarge
from vsmd.protocol import MAX_DEPTH, depth_over, dumps, loads_object

SCHEMA = 1
SECTIONS = ("identity", "policy", "metrics", "data")
Key = tuple[str, str]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, order=True)
class Version:
    """A hybrid logical clock stamp; ordered by time, then counter, then writer."""

    wall: int
    counter: int
    writer: str

    def to_list(self) -> list[Any]:
        return [self.wall, self.counter, self.writer]

    @classmethod
    def from_list(cls, raw: Any) -> Version:
        if (
            not isinstance(raw, list)
            or len(raw) != 3
            or type(raw[0]) is not int
            or type(raw[1]) is not int
            or not isinstance(raw[2], str)
            or raw[0] < 0
            or raw[1] < 0
        ):
            raise ProtocolError(f"bad state version {str(raw)[:80]}")
        return cls(raw[0], raw[1], raw[2])


class Clock:
    """Hybrid logical clock: stamps never go backwards, even if the wall clock does, and
    stay above every stamp seen from others (so a restarted writer that has seen its last
    state writes above it)."""

    def __init__(self, writer: str, now: Callable[[], int] = wall_ms) -> None:
        self.writer = writer
        self._now = now
        self._wall = 0
        self._counter = 0

    def tick(self) -> Version:
        now = self._now()
        if now > self._wall:
            self._wall, self._counter = now, 0
        else:
            self._counter += 1
        return Version(self._wall, self._counter, self.writer)

    def observe(self, v: Version) -> None:
        self._wall, self._counter = max((self._wall, self._counter), (v.wall, v.counter))


@dataclass(frozen=True)
class Entry:
    value: Any
    version: Version
    deleted: bool = False
    # Fields a newer writer added that this version does not know: kept and passed on.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, section: str, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {**self.extra, "s": section, "k": key, "v": self.version.to_list()}
        if self.deleted:
            out["d"] = True
        else:
            out["x"] = self.value
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> tuple[Key, Entry]:
        if not isinstance(raw, dict):
            raise ProtocolError("a state entry must be an object")
        section, key = raw.get("s"), raw.get("k")
        if not isinstance(section, str) or not isinstance(key, str) or not key:
            raise ProtocolError("a state entry needs a section 's' and a key 'k'")
        if len(key) > 200:
            raise ProtocolError(f"state key {key[:40]!r}... is over 200 characters")
        if len(section) > 64:
            raise ProtocolError(f"state section {section[:40]!r}... is over 64 characters")
        deleted = raw.get("d", False)
        if not isinstance(deleted, bool):
            raise ProtocolError(f"state entry {section}.{key}: 'd' must be a boolean")
        if not deleted and "x" not in raw:
            raise ProtocolError(f"state entry {section}.{key} has no value")
        value = None if deleted else raw["x"]
        if depth_over(value, MAX_DEPTH):
            # What we could not write again must not get in: every later snapshot would fail.
            raise ProtocolError(f"state value {section}.{key} is nested over {MAX_DEPTH} levels")
        extra = {k: v for k, v in raw.items() if k not in ("s", "k", "v", "d", "x")}
        if depth_over(extra, MAX_DEPTH):  # passed on in every snapshot, as the value is
            raise ProtocolError(f"a field of state entry {section}.{key} is nested too deep")
        return (section, key), cls(value, Version.from_list(raw.get("v")), deleted, extra)


def newer(a: Entry | None, b: Entry) -> bool:
    return a is None or b.version > a.version


def merge(a: Mapping[Key, Entry], b: Mapping[Key, Entry]) -> dict[Key, Entry]:
    """The pure merge: per key, the entry with the higher version."""
    out = dict(a)
    for k, e in b.items():
        if newer(out.get(k), e):
            out[k] = e
    return out


class StateMap:
    """One replica of one VSM's state."""

    def __init__(self, entries: Mapping[Key, Entry] | None = None) -> None:
        self.entries: dict[Key, Entry] = dict(entries or {})

    def apply(self, updates: Mapping[Key, Entry]) -> dict[Key, Entry]:
        """Merge ``updates`` in; returns the entries that changed this replica."""
        changed = {k: e for k, e in updates.items() if newer(self.entries.get(k), e)}
        self.entries.update(changed)
        return changed

    def max_version(self) -> Version | None:
        return max((e.version for e in self.entries.values()), default=None)

    def section(self, name: str) -> dict[str, Any]:
        return {k: e.value for (s, k), e in self.entries.items() if s == name and not e.deleted}

    def value(self, section: str, key: str, default: Any = None) -> Any:
        """One key's value: a lookup, where ``section`` copies the whole section."""
        e = self.entries.get((section, key))
        return default if e is None or e.deleted else e.value

    def view(self) -> dict[str, dict[str, Any]]:
        """Every section as plain key-values (tombstones left out)."""
        out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for (s, k), e in self.entries.items():
            if not e.deleted:
                out.setdefault(s, {})[k] = e.value
        return out


def encode(entries: Mapping[Key, Entry], **extra: Any) -> dict[str, Any]:
    """A snapshot or delta as a JSON-able object (``extra`` fields ride along)."""
    return {
        **extra,
        "schema": SCHEMA,
        "entries": [e.to_dict(s, k) for (s, k), e in sorted(entries.items())],
    }


def decode(obj: Any) -> tuple[dict[Key, Entry], dict[str, Any]]:
    """The entries of a snapshot or delta, and its other top-level fields (kept, not dropped).

    A newer schema is read as far as this one understands it: fields it does not know stay in
    ``extra`` (top level) and in each entry's ``extra``."""
    if not isinstance(obj, dict):
        raise ProtocolError("a state snapshot must be an object")
    schema = obj.get("schema")
    if type(schema) is not int or schema < 1:
        raise ProtocolError(f"bad state schema {str(schema)[:20]!r}")
    raw = obj.get("entries")
    if not isinstance(raw, list):
        raise ProtocolError("a state snapshot needs a list of 'entries'")
    entries: dict[Key, Entry] = {}
    for item in raw:
        key, entry = Entry.from_dict(item)
        if newer(entries.get(key), entry):
            entries[key] = entry
    extra = {k: v for k, v in obj.items() if k not in ("schema", "entries")}
    if depth_over(extra, MAX_DEPTH):
        raise ProtocolError(f"a field of the state snapshot is nested over {MAX_DEPTH} levels")
    return entries, extra


def to_bytes(entries: Mapping[Key, Entry], limit: int, **extra: Any) -> bytes:
    obj = encode(entries, **extra)
    try:
        raw = dumps(obj)
    except TypeError as exc:  # orjson.JSONEncodeError: over 254 levels, over 64 bits, a set...
        raise ProtocolError(f"state cannot be encoded as JSON: {exc}") from None
    if len(raw) > limit:
        raise TooLarge(f"state of {len(raw)} bytes is over the limit of {limit} bytes")
    return raw


def entry_bytes(key: Key, entry: Entry) -> bytes:
    """One entry as a snapshot lists it: the daemon journals a state one entry to a row, so a
    VSM that changes a few of its keys costs the journal those few, not its whole state."""
    try:
        return dumps(entry.to_dict(*key))
    except TypeError as exc:  # as in to_bytes
        raise ProtocolError(f"state cannot be encoded as JSON: {exc}") from None


def from_entry_bytes(rows: Iterable[bytes], limit: int) -> dict[Key, Entry]:
    """Entries written by ``entry_bytes``, read as the snapshot that lists them."""
    return from_bytes(b'{"schema":%d,"entries":[%b]}' % (SCHEMA, b",".join(rows)), limit)[0]


def from_bytes(raw: bytes, limit: int) -> tuple[dict[Key, Entry], dict[str, Any]]:
    return decode(loads_object(raw, limit))


# --- policy flows down --------------------------------------------------------------------------


def tighten(upper: Any, lower: Any) -> Any:
    """What a descendant's ``lower`` value leaves of an ancestor's ``upper`` one.

    Numbers: the smaller (a lower limit); lists: those of the ancestor's items the descendant
    keeps (a smaller set); anything else: the ancestor's value stands. Booleans are not
    numbers: the ancestor's stands."""
    if _number(upper) and _number(lower):
        return min(upper, lower)
    if isinstance(upper, list) and isinstance(lower, list):
        return [item for item in upper if item in lower]
    return upper


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def effective_policy(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge policy layers, the root's first and the VSM's own last: each may only tighten."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = tighten(out[key], value) if key in out else value
    return out
