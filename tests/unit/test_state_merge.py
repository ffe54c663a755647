"""The replicated state's laws: merge is a semilattice join, replicas converge, clocks move on.

Replicas receive updates over the broker in any order, some twice, some never (until a snapshot
heals them), so these properties are what keeps every replica of a VSM's state the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from vsmd.state import (
    Clock,
    Entry,
    Key,
    StateMap,
    Version,
    decode,
    effective_policy,
    encode,
    from_bytes,
    merge,
    to_bytes,
)

FAST = settings(max_examples=200, deadline=None)
QUICK = settings(max_examples=100, deadline=None)
LIMIT = 1 << 20

# Small ranges so that keys, walls, counters and writers collide often.
versions = st.builds(
    Version, st.integers(0, 3), st.integers(0, 2), st.sampled_from(("a", "b", "c"))
)
keys = st.tuples(st.sampled_from(("data", "policy")), st.sampled_from(("k1", "k2", "k3")))


def entry_of(v: Version) -> Entry:
    """The one entry a version can stand for: a writer never stamps two things the same."""
    if (v.wall + v.counter) % 3 == 0:
        return Entry(None, v, deleted=True)
    return Entry([v.wall, v.counter, v.writer], v)


maps = st.dictionaries(keys, versions.map(entry_of), max_size=6)


def latest(updates: Iterable[Mapping[Key, Entry]]) -> dict[Key, Entry]:
    """The expected state, computed without merge: per key the entry of the highest version."""
    by_key: dict[Key, list[Entry]] = {}
    for update in updates:
        for key, entry in update.items():
            by_key.setdefault(key, []).append(entry)
    return {key: max(found, key=lambda e: e.version) for key, found in by_key.items()}


# --- merge ------------------------------------------------------------------------------------


@FAST
@given(maps, maps, maps)
def test_merge_is_a_pure_commutative_associative_idempotent_join(
    a: dict[Key, Entry], b: dict[Key, Entry], c: dict[Key, Entry]
) -> None:
    # One test for all the laws: generating the maps costs more than checking them.
    a_before, b_before = dict(a), dict(b)
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, {}) == a == merge({}, a)
    ab = merge(a, b)
    assert merge(ab, b) == ab == merge(ab, a)
    assert ab == latest([a, b])
    assert (a, b) == (a_before, b_before)  # pure: the inputs are left as they were


@QUICK
@given(maps, maps)
def test_apply_is_merge_and_reports_only_what_changed(
    a: dict[Key, Entry], b: dict[Key, Entry]
) -> None:
    replica = StateMap(a)
    changed = replica.apply(b)
    assert replica.entries == merge(a, b)
    assert changed == {k: e for k, e in b.items() if k not in a or e.version > a[k].version}
    assert replica.apply(b) == {}
    assert replica.apply(a) == {}


# --- many writers, many replicas, any delivery --------------------------------------------------

WRITERS = ("w0", "w1", "w2")
REPLICAS = 3
STATE_KEYS = (("data", "a"), ("data", "b"), ("policy", "a"), ("metrics", "x"))
# None deletes the key (a tombstone); a number sets it.
op_lists = st.lists(
    st.tuples(st.sampled_from(STATE_KEYS), st.none() | st.integers(0, 3)), min_size=1, max_size=3
)


class Replication(RuleBasedStateMachine):
    """Writers stamp updates on their own clocks (whose wall time may go backwards); every
    update reaches each replica any number of times, in any order, or only via a snapshot."""

    updates = Bundle("updates")

    def __init__(self) -> None:
        super().__init__()
        self.now = dict.fromkeys(WRITERS, 0)
        self.clocks = {w: self.new_clock(w) for w in WRITERS}
        self.log: list[dict[Key, Entry]] = []
        self.replicas = [StateMap() for _ in range(REPLICAS)]
        # The updates each replica has received, directly or inside a snapshot.
        self.seen: list[set[int]] = [set() for _ in range(REPLICAS)]

    def new_clock(self, writer: str) -> Clock:
        return Clock(writer, now=lambda: self.now[writer])

    @rule(target=updates, writer=st.sampled_from(WRITERS), now=st.integers(0, 6), ops=op_lists)
    def write(self, writer: str, now: int, ops: list[tuple[Key, int | None]]) -> int:
        self.now[writer] = now
        update: dict[Key, Entry] = {}
        for key, value in ops:
            stamp = self.clocks[writer].tick()
            update[key] = Entry(None, stamp, deleted=True) if value is None else Entry(value, stamp)
        self.log.append(update)
        return len(self.log) - 1

    @rule(update=updates, replica=st.integers(0, REPLICAS - 1), times=st.integers(1, 2))
    def deliver(self, update: int, replica: int, times: int) -> None:
        target = self.replicas[replica]
        for _ in range(times):
            target.apply(self.log[update])
        for key, entry in self.log[update].items():
            assert target.entries[key].version >= entry.version
        self.seen[replica].add(update)

    @rule(a=st.integers(0, REPLICAS - 1), b=st.integers(0, REPLICAS - 1), wire=st.booleans())
    def heal(self, a: int, b: int, wire: bool) -> None:
        """A replica that lost messages takes another's snapshot."""
        snapshot = self.replicas[b].entries
        if wire:
            entries, _ = from_bytes(to_bytes(snapshot, LIMIT), LIMIT)
        else:
            entries, _ = decode(encode(snapshot))
        assert entries == snapshot
        self.replicas[a].apply(entries)
        self.seen[a] |= self.seen[b]

    @rule(writer=st.sampled_from(WRITERS), replica=st.integers(0, REPLICAS - 1))
    def writer_reads(self, writer: str, replica: int) -> None:
        seen = self.replicas[replica].max_version()
        if seen is not None:
            self.clocks[writer].observe(seen)

    @precondition(lambda self: len(self.log) > 0)
    @rule(writer=st.sampled_from(WRITERS))
    def restart_writer(self, writer: str) -> None:
        """A restarted writer gets its last state back (journal) before it writes again."""
        self.clocks[writer] = self.new_clock(writer)
        own = [e.version for u in self.log for e in u.values() if e.version.writer == writer]
        if own:
            self.clocks[writer].observe(max(own))

    @invariant()
    def each_replica_holds_the_latest_of_what_it_has_seen(self) -> None:
        for replica, seen in zip(self.replicas, self.seen, strict=True):
            assert replica.entries == latest(self.log[i] for i in seen)

    def teardown(self) -> None:
        """Once every update has arrived, in a different order at each replica, all agree."""
        for n, replica in enumerate(self.replicas):
            order = list(range(len(self.log)))
            order = order[n:] + order[:n]
            for i in reversed(order) if n % 2 else order:
                replica.apply(self.log[i])
        expected = latest(self.log)
        for replica in self.replicas:
            assert replica.entries == expected
            assert replica.view() == self.replicas[0].view()


Replication.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestReplication = Replication.TestCase


# --- the clock ----------------------------------------------------------------------------------


def fake_clock(writer: str, nows: list[int]) -> Clock:
    times = iter(nows)
    return Clock(writer, now=lambda: next(times))


@QUICK
@given(st.lists(st.integers(0, 20), min_size=1, max_size=40))
def test_stamps_increase_strictly_even_when_the_wall_clock_goes_back(nows: list[int]) -> None:
    clock = fake_clock("m", nows)
    stamps = [clock.tick() for _ in nows]
    assert all(a < b for a, b in pairwise(stamps))
    assert {s.writer for s in stamps} == {"m"}


seen_versions = st.builds(
    Version, st.integers(0, 25), st.integers(0, 4), st.sampled_from(("a", "m", "z"))
)


@QUICK
@given(st.lists(st.tuples(st.integers(0, 20), st.none() | seen_versions), min_size=1))
def test_after_observing_a_version_every_stamp_is_above_it(
    steps: list[tuple[int, Version | None]],
) -> None:
    clock = fake_clock("m", [now for now, _ in steps])
    floor: Version | None = None
    for _, seen in steps:
        if seen is not None:
            clock.observe(seen)
            floor = max(floor, seen) if floor is not None else seen
        stamp = clock.tick()
        assert floor is None or stamp > floor
        floor = stamp


def test_the_wall_clock_going_back_counts_on_from_the_last_stamp() -> None:
    clock = fake_clock("m", [100, 50, 100, 101])
    assert [clock.tick().to_list() for _ in range(4)] == [
        [100, 0, "m"],
        [100, 1, "m"],
        [100, 2, "m"],
        [101, 0, "m"],
    ]


def test_observing_an_older_version_does_not_move_the_clock_back() -> None:
    clock = fake_clock("m", [10, 0])
    assert clock.tick() == Version(10, 0, "m")
    clock.observe(Version(3, 7, "z"))
    assert clock.tick() == Version(10, 1, "m")


# --- tombstones ---------------------------------------------------------------------------------

KEY = ("data", "k")


def test_a_stale_write_after_a_delete_does_not_resurrect_the_key() -> None:
    clock = fake_clock("w", [1, 2, 3])
    written, deleted, rewritten = clock.tick(), clock.tick(), clock.tick()
    replica = StateMap()
    replica.apply({KEY: Entry("v1", written)})
    assert replica.section("data") == {"k": "v1"}
    replica.apply({KEY: Entry(None, deleted, deleted=True)})
    replica.apply({KEY: Entry("v1", written)})  # the old write, late or duplicated
    replica.apply({KEY: Entry("older", Version(0, 0, "z"))})
    assert replica.section("data") == {}
    assert "k" not in replica.view()["data"]
    assert replica.entries[KEY].deleted
    replica.apply({KEY: Entry("v2", rewritten)})  # a newer write does bring it back
    assert replica.view()["data"] == {"k": "v2"}


@QUICK
@given(
    st.lists(
        st.tuples(versions, st.booleans()), min_size=1, max_size=8, unique_by=lambda t: t[0]
    ).flatmap(st.permutations)
)
def test_a_key_is_visible_exactly_when_its_latest_entry_is_not_a_tombstone(
    writes: list[tuple[Version, bool]],
) -> None:
    replica = StateMap()
    for version, deleted in writes:
        replica.apply({KEY: Entry(None if deleted else version.to_list(), version, deleted)})
    top, top_deleted = max(writes)
    visible: dict[str, Any] = {} if top_deleted else {"k": top.to_list()}
    assert replica.section("data") == visible
    assert replica.view()["data"] == visible


# --- policy only tightens on the way down -------------------------------------------------------

policy_values = st.one_of(
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.lists(st.integers(0, 4), max_size=4),
    st.sampled_from(("strict", "lax")),
    st.booleans(),
)
policy_layers = st.lists(
    st.dictionaries(st.sampled_from(("a", "b", "c", "d")), policy_values, max_size=4),
    min_size=1,
    max_size=5,
)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_not_looser(effective: Any, first: Any, set_below: list[Any]) -> None:
    """``first`` is the value of the layer nearest the root that sets the key; ``set_below``
    the values of every layer that sets it, ``first`` included."""
    if is_number(first):
        assert is_number(effective)
        assert all(effective <= v for v in set_below if is_number(v))
    elif isinstance(first, list):
        assert isinstance(effective, list)
        for v in set_below:
            if isinstance(v, list):
                assert all(item in v for item in effective)
    else:
        assert effective == first
        assert type(effective) is type(first)


@FAST
@given(policy_layers)
def test_a_descendant_never_loosens_an_ancestors_policy(layers: list[dict[str, Any]]) -> None:
    effective = effective_policy(layers)
    assert set(effective) == {k for layer in layers for k in layer}
    for key, value in effective.items():
        setters = [layer[key] for layer in layers if key in layer]
        check_not_looser(value, setters[0], setters)
        if len(setters) == 1:
            assert value == setters[0]  # a key first set lower down is kept as it is


def test_tighten_examples() -> None:
    root = {"memory_mb": 512, "tools": ["http", "llm", "shell"], "mode": "strict", "log": True}
    own = {"memory_mb": 1024, "tools": ["llm", "shell", "sudo"], "mode": "lax", "log": 0}
    child = {"memory_mb": 256, "tools": ["shell"], "new": 1}
    assert effective_policy([root, own]) == {
        "memory_mb": 512,
        "tools": ["llm", "shell"],
        "mode": "strict",
        "log": True,  # a bool is not a number: 0 does not lower True
    }
    assert effective_policy([root, own, child]) == {
        "memory_mb": 256,
        "tools": ["shell"],
        "mode": "strict",
        "log": True,
        "new": 1,
    }
