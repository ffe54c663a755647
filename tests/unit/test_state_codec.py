"""The state's wire format: snapshots and deltas come back exactly as they went, fields of a newer
schema ride along, and anything malformed is refused with a ProtocolError that says what."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsmd.errors import BadJson, ProtocolError, TooLarge
from vsmd.protocol import depth_over
from vsmd.state import (
    SCHEMA,
    Entry,
    Key,
    StateMap,
    Version,
    decode,
    encode,
    entry_bytes,
    from_bytes,
    from_entry_bytes,
    to_bytes,
)

LIMIT = 1 << 20
V = Version(1_700_000_000_000, 0, "root.a")


def round_trip(entries: dict[Key, Entry], **extra: Any) -> tuple[dict[Key, Entry], dict[str, Any]]:
    raw = to_bytes(entries, LIMIT, **extra)
    back, back_extra = from_bytes(raw, LIMIT)
    # Byte for byte the same once encoded again: no type, sign or digit was lost on the way.
    assert to_bytes(back, LIMIT, **back_extra) == raw
    return back, back_extra


def nested(depth: int) -> Any:
    """Dicts and lists taking turns, ``depth`` containers deep."""
    value: Any = "bottom"
    for level in range(depth):
        value = {"l": value} if level % 2 else [value]
    return value


# --- round trips --------------------------------------------------------------------------------

# Anything JSON can carry; orjson writes integers of up to 64 bits, text without lone surrogates.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
state_keys = st.tuples(st.text(max_size=10), st.text(min_size=1, max_size=200))
state_versions = st.builds(
    Version, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.text(max_size=10)
)
state_entries = st.builds(
    lambda value, version, deleted: Entry(None if deleted else value, version, deleted),
    json_values,
    state_versions,
    st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(state_keys, state_entries, max_size=5))
def test_any_state_round_trips_exactly(entries: dict[Key, Entry]) -> None:
    assert decode(encode(entries)) == (entries, {})
    assert round_trip(entries) == (entries, {})


def test_unicode_keys_and_values_round_trip() -> None:
    entries = {
        ("data", "🦊 fox"): Entry("👨‍👩‍👧 family, 🏳️‍🌈 flag", V),
        ("data", "مرحبا"): Entry("שלום \u202eevil\u202c עולם", V),  # RTL text and overrides
        ("data", "nul\x00inside"): Entry("a\x00b\x00", V),
        ("ünïcödé", "キー"): Entry({"ключ": ["值", "\u0000", "\uffff", "\U0010ffff"]}, V),
    }
    back, _ = round_trip(entries)
    assert back == entries
    assert StateMap(back).section("data")["nul\x00inside"] == "a\x00b\x00"


def test_a_tombstone_round_trips_without_its_value() -> None:
    entries = {("data", "gone"): Entry(None, V, deleted=True), ("data", "kept"): Entry(0, V)}
    obj = encode(entries)
    assert obj["entries"][0] == {"s": "data", "k": "gone", "v": V.to_list(), "d": True}
    back, _ = round_trip(entries)
    assert back == entries
    assert StateMap(back).view()["data"] == {"kept": 0}


def test_floats_round_trip_exactly() -> None:
    floats = [1e308, -1e308, -0.0, 0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 0.1, 1 / 3]
    entries = {("data", str(i)): Entry(f, V) for i, f in enumerate(floats)}
    back, _ = round_trip(entries)
    for i, f in enumerate(floats):
        got = back["data", str(i)].value
        assert type(got) is float
        assert struct.pack("<d", got) == struct.pack("<d", f)  # -0.0 stays negative
    # Integers stay integers, even where a float would lose digits.
    ints = {("data", "big"): Entry(2**53 + 1, V), ("data", "one"): Entry(1, V)}
    assert round_trip(ints)[0]["data", "big"].value == 2**53 + 1
    assert type(round_trip(ints)[0]["data", "one"].value) is int


def test_nan_and_infinity_are_written_as_null() -> None:
    """JSON has no NaN or infinity: orjson writes them as null, so they come back as None."""
    entries = {
        ("metrics", "nan"): Entry(math.nan, V),
        ("metrics", "inf"): Entry(math.inf, V),
        ("metrics", "-inf"): Entry([-math.inf], V),
    }
    back, _ = from_bytes(to_bytes(entries, LIMIT), LIMIT)
    assert StateMap(back).section("metrics") == {"nan": None, "inf": None, "-inf": [None]}


def test_fifty_levels_of_nesting_round_trip() -> None:
    entries = {("data", "deep"): Entry(nested(50), V)}
    assert round_trip(entries)[0] == entries


def test_a_value_nested_too_deep_to_encode_is_refused_with_a_protocol_error() -> None:
    # orjson writes at most 254 levels (the snapshot itself takes three of them).
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        to_bytes({("data", "deep"): Entry(nested(300), V)}, LIMIT)


def test_json_nested_too_deep_to_decode_is_refused_as_bad_json() -> None:
    # orjson reads at most 1024 levels.
    raw = b'{"schema":1,"entries":[{"s":"data","k":"deep","v":[1,0,"w"],"x":%s}]}' % (
        b"[" * 2000 + b"]" * 2000
    )
    with pytest.raises(BadJson, match="depth"):
        from_bytes(raw, LIMIT)


def test_what_decodes_can_be_encoded_again() -> None:
    raw = orjson.dumps(
        {"schema": 1, "entries": [{"s": "data", "k": "deep", "v": [1, 0, "w"], "x": 0}]}
    ).replace(b'"x":0', b'"x":' + b"[" * 300 + b"]" * 300)
    try:
        entries, _ = from_bytes(raw, LIMIT)
    except ProtocolError:
        return  # refused on the way in: fine
    to_bytes(entries, LIMIT)


def test_values_that_json_cannot_carry_are_refused_with_a_protocol_error() -> None:
    for value in (2**64, -(2**63) - 1, "\ud800", {1: "int key"}, {"a", "set"}):
        with pytest.raises(ProtocolError, match="cannot be encoded"):
            to_bytes({("data", "k"): Entry(value, V)}, LIMIT)


def test_size_limit_is_exact() -> None:
    entries = {("data", "blob"): Entry("x" * 900_000, V), ("data", "small"): Entry(1, V)}
    size = len(to_bytes(entries, LIMIT))
    assert size > 900_000
    raw = to_bytes(entries, size)  # exactly at the limit: fine
    assert from_bytes(raw, size)[0] == entries
    with pytest.raises(TooLarge, match=f"{size} bytes is over the limit of {size - 1}"):
        to_bytes(entries, size - 1)
    with pytest.raises(TooLarge, match="over the limit"):
        from_bytes(raw, size - 1)


# --- forward compatibility ----------------------------------------------------------------------


def test_fields_of_a_newer_schema_are_kept_through_decode_and_encode() -> None:
    snapshot = {
        "since": [5, 1, "root"],
        "origin": {"vsm": "root.a", "epoch": 3},
        "schema": SCHEMA,
        "entries": [
            {"s": "data", "k": "a", "v": [1, 0, "w"], "x": 1, "ttl": 60, "meta": {"by": ["x"]}},
            {"s": "data", "k": "b", "v": [2, 0, "w"], "d": True, "reason": "expired"},
            {"s": "future", "k": "c", "v": [3, 0, "w"], "x": None},
        ],
    }
    entries, extra = decode(snapshot)
    assert extra == {"since": [5, 1, "root"], "origin": {"vsm": "root.a", "epoch": 3}}
    assert entries["data", "a"].extra == {"ttl": 60, "meta": {"by": ["x"]}}
    assert entries["data", "b"].extra == {"reason": "expired"}
    assert StateMap(entries).view()["future"] == {"c": None}  # an unknown section is kept too
    assert encode(entries, **extra) == snapshot
    # and through a replica that merged it and passed it on over the wire
    replica = StateMap()
    replica.apply(entries)
    assert orjson.loads(to_bytes(replica.entries, LIMIT, **extra)) == snapshot


def test_a_newer_schema_is_read_as_far_as_it_is_understood() -> None:
    entries, extra = decode(
        {"schema": SCHEMA + 1, "entries": [{"s": "data", "k": "a", "v": [1, 0, "w"], "x": 1}]}
    )
    assert entries == {("data", "a"): Entry(1, Version(1, 0, "w"))}
    assert extra == {}


# --- malformed input ----------------------------------------------------------------------------


DROP = object()  # leave the field out


def snapshot_with(**entry: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"s": "data", "k": "a", "v": [1, 0, "w"], "x": 1}
    base.update(entry)
    return {"schema": 1, "entries": [{k: v for k, v in base.items() if v is not DROP}]}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "snapshot must be an object"),
        ({"entries": []}, "bad state schema 'None'"),
        ({"schema": 0, "entries": []}, "bad state schema '0'"),
        ({"schema": -1, "entries": []}, "bad state schema"),
        ({"schema": "1", "entries": []}, "bad state schema"),
        ({"schema": True, "entries": []}, "bad state schema"),
        ({"schema": 1.0, "entries": []}, "bad state schema"),
        ({"schema": 1}, "needs a list of 'entries'"),
        ({"schema": 1, "entries": {}}, "needs a list of 'entries'"),
        ({"schema": 1, "entries": "[]"}, "needs a list of 'entries'"),
        ({"schema": 1, "entries": [1]}, "entry must be an object"),
        (snapshot_with(k=DROP), "needs a section 's' and a key 'k'"),
        (snapshot_with(k=""), "needs a section 's' and a key 'k'"),
        (snapshot_with(k=7), "needs a section 's' and a key 'k'"),
        (snapshot_with(s=DROP), "needs a section 's' and a key 'k'"),
        (snapshot_with(k="k" * 201), "is over 200 characters"),
        (snapshot_with(x=DROP), "data.a has no value"),
        (snapshot_with(x=DROP, d=False), "data.a has no value"),
        (snapshot_with(d=1), "data.a: 'd' must be a boolean"),
        (snapshot_with(v=DROP), "bad state version None"),
        (snapshot_with(v=[1, 2]), r"bad state version \[1, 2\]"),
        (snapshot_with(v=[-1, 0, "w"]), "bad state version"),
        (snapshot_with(v=[0, -1, "w"]), "bad state version"),
        (snapshot_with(v=[True, 0, "w"]), "bad state version"),
        (snapshot_with(v=[0, False, "w"]), "bad state version"),
        (snapshot_with(v=[1.0, 0, "w"]), "bad state version"),
        (snapshot_with(v=[1, 0, 5]), "bad state version"),
        (snapshot_with(v=[1, 0, "w", 0]), "bad state version"),
        (snapshot_with(v="1,0,w"), "bad state version"),
        (snapshot_with(v={"wall": 1}), "bad state version"),
    ],
)
def test_malformed_snapshots_are_refused_with_a_message(obj: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        decode(obj)
    assert caught.value.code == "BAD_REQUEST"
    if isinstance(obj, dict):  # (bytes of a non-object are refused before decode sees them)
        with pytest.raises(ProtocolError, match=message):
            from_bytes(orjson.dumps(obj), LIMIT)


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (b"", BadJson, "not valid JSON"),
        (b'{"schema": 1, "entries": [', BadJson, "not valid JSON"),
        (b'{"schema": NaN, "entries": []}', BadJson, "not valid JSON"),
        (b"[]", ProtocolError, "must be a JSON object, got list"),
        # 2**64 is read as a float, which no version field accepts
        (
            b'{"schema":1,"entries":[{"s":"d","k":"a","v":[18446744073709551616,0,"w"],"x":1}]}',
            ProtocolError,
            "bad state version",
        ),
    ],
)
def test_malformed_bytes_are_refused_with_a_message(
    raw: bytes, error: type[ProtocolError], message: str
) -> None:
    with pytest.raises(error, match=message):
        from_bytes(raw, LIMIT)


def test_a_key_repeated_in_one_snapshot_keeps_its_highest_version() -> None:
    entries, _ = decode(
        {
            "schema": 1,
            "entries": [
                {"s": "data", "k": "a", "v": [2, 0, "w"], "x": "new"},
                {"s": "data", "k": "a", "v": [1, 0, "w"], "x": "old"},
                {"s": "data", "k": "a", "v": [1, 5, "w"], "d": True},
            ],
        }
    )
    assert entries == {("data", "a"): Entry("new", Version(2, 0, "w"))}


# --- the daemon's journal rows ------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(state_keys, state_entries, max_size=5))
def test_entries_journaled_one_to_a_row_read_back_exactly(entries: dict[Key, Entry]) -> None:
    assert from_entry_bytes([entry_bytes(k, e) for k, e in entries.items()], LIMIT) == entries


def test_an_entry_json_cannot_carry_is_refused_with_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="cannot be encoded as JSON"):
        entry_bytes(("data", "s"), Entry({1, 2}, V))


def test_value_reads_one_key_and_not_a_tombstone() -> None:
    state = StateMap({("data", "a"): Entry(1, V), ("data", "b"): Entry(None, V, deleted=True)})
    assert state.value("data", "a") == 1
    assert state.value("data", "b", "gone") == "gone"
    assert state.value("metrics", "a", 0) == 0


def depth(value: Any) -> int:
    """Containers deep, the plain recursive way."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(json_values, st.integers(0, 6))
def test_depth_over_agrees_with_the_plain_recursive_depth(value: Any, limit: int) -> None:
    assert depth_over(value, limit) == (depth(value) > limit)


def test_depth_over_at_the_limit() -> None:
    assert not depth_over(nested(200), 200)
    assert depth_over(nested(201), 200)
    assert depth_over([1, [2, {"a": [3]}]], 3)
    assert not depth_over([1, [2, {"a": [3]}]], 4)
    assert not depth_over("scalar", 0)
