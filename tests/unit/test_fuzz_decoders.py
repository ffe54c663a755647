"""Fuzzing every decoder of untrusted input: arbitrary bytes, arbitrary JSON and near-valid
messages either decode to a valid object that encodes back to itself, or are refused with one of
the protocol's errors and a message. Never another exception: that would be an INTERNAL reply at
best, and a value that cannot be written again poisons every later reply that carries it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from vsmd.errors import BadJson, ProtocolError, TooLarge, UnknownCommand, VsmdError
from vsmd.protocol import (
    COMMANDS,
    MAX_DEPTH,
    POLICY_KEYS,
    Command,
    Envelope,
    Spawn,
    check_policy_value,
    depth_over,
    ok_reply,
    parse_request,
)
from vsmd.state import from_bytes, to_bytes

FUZZ = settings(max_examples=300, deadline=None)
LIMIT = 4096
REFUSALS = (ProtocolError, BadJson, TooLarge, UnknownCommand)
T = TypeVar("T")

# --- strategies ---------------------------------------------------------------------------------

# Numbers at and beyond what orjson reads as integers (over 64 bits it reads a float).
huge_ints = st.sampled_from((2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30))
numbers = st.integers() | huge_ints | st.floats()
# Any code point, lone surrogates included: they must come out as BAD_JSON, not a crash.
texts = st.text(st.characters(), max_size=6)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=5,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    """Lists and objects taking turns, ``depth`` containers deep."""
    value = leaf
    for level in range(depth):
        value = {"n": value} if level % 2 else [value]
    return value


# Deep values around every limit that matters: ours (MAX_DEPTH), the encoder's (254 levels).
deep_values = st.builds(nested, st.integers(0, 300), scalars)
any_values = json_values | deep_values

# What the JSON decoder can hand on: 64-bit integers, finite floats, text without lone surrogates.
wire_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
wire_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | wire_text
)
wire_values = st.recursive(
    wire_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=5,
) | st.builds(nested, st.integers(0, 300), wire_scalars)


def to_json(value: Any, ascii_only: bool) -> bytes:
    """JSON text of anything, as a client in another language might write it: integers of any
    size, NaN and Infinity, lone surrogates (escaped, or as invalid UTF-8)."""
    text = json.dumps(value, ensure_ascii=ascii_only, check_circular=False)
    return text.encode("utf-8", errors="surrogatepass")


def bodies(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(to_json, values, st.booleans())


def decoded(fn: Callable[..., T], *args: Any) -> T | None:
    """What ``fn`` returns, or None if it refused the input the way the protocol says."""
    try:
        got = fn(*args)
    except VsmdError as err:
        assert isinstance(err, REFUSALS), f"{type(err).__name__}: {err.message}"
        assert err.message
        event(f"{fn.__name__}: {err.code}")  # --hypothesis-show-statistics: what was reached
        return None
    event(f"{fn.__name__}: decoded")
    return got


def mutated(valid: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    """A valid message with a few fields replaced (by anything), added or, for None, removed."""
    out = dict(valid)
    for key, value in changes:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def near_valid(
    valid: st.SearchStrategy[dict[str, Any]], keys: tuple[str, ...]
) -> st.SearchStrategy[dict[str, Any]]:
    # Mostly one change or none: a valid message with every field wrong decodes too rarely to
    # test the other half of the property (that what is taken comes back the same).
    change = st.tuples(st.sampled_from(keys) | texts, st.none() | any_values)
    return st.builds(mutated, valid, st.lists(change, max_size=2))


# Values of the right kind for each field type of the commands, with the edges of their checks.
kind_values: dict[str, st.SearchStrategy[Any]] = {
    "str": st.sampled_from(("a", "root", "permanent", "warn", "x" * 300)) | wire_text,
    "int": st.integers(-1, 3) | st.integers(-(2**63), 2**64 - 1),
    "float": st.floats(-1, 5) | st.floats(allow_nan=False, allow_infinity=False),
    "bool": st.booleans(),
    "dict[str, Any]": st.dictionaries(
        st.sampled_from(("x-a", "max_children", "memory_mb", "k")), wire_values, max_size=3
    )
    | st.dictionaries(wire_text, wire_values, max_size=3)
    | st.builds(lambda d, v: {"d": nested(d, v)}, st.integers(190, 260), wire_scalars),
    "list[str]": st.lists(
        st.sampled_from(("messaging", "state", "spawn", "http", "teleport")) | wire_text,
        max_size=4,
    ),
}


def command_args(cls: type[Command]) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type).removesuffix(" | None")
        values = kind_values[kind] | st.none() if kind != str(f.type) else kind_values[kind]
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        (required if missing else optional)[f.name] = values
    return st.fixed_dictionaries(required, optional=optional)


field_names = tuple(sorted({f.name for c in COMMANDS.values() for f in dataclasses.fields(c)}))
# Built once per command: a strategy made inside a draw (flatmap) is analysed again each time.
valid_args = st.one_of(
    [st.tuples(st.just(name), command_args(cls)) for name, cls in sorted(COMMANDS.items())]
)
requests = st.builds(
    lambda cmd_args, v, changes: mutated(
        {"v": v, "cmd": cmd_args[0], "args": cmd_args[1]}, changes
    ),
    valid_args,
    st.sampled_from((1, 1, 1, 1.0, True, 2, "1")),
    st.lists(st.tuples(st.sampled_from(("v", "cmd", "args")) | texts, any_values), max_size=1),
)
args = st.one_of(
    [
        st.tuples(st.just(name), near_valid(command_args(cls), field_names))
        for name, cls in sorted(COMMANDS.items())
    ]
)

# --- admin requests -----------------------------------------------------------------------------


def assert_round_trips(cmd: Command) -> None:
    body = orjson.dumps(cmd.to_request())
    assert parse_request(body, 1 << 20) == cmd
    # Replies carry what a request brought in a few levels further down (list -> info -> field).
    orjson.dumps({"ok": True, "result": [{"reply": [cmd.to_request()]}]})


@FUZZ
@given(
    st.binary(max_size=100)
    | bodies(any_values)
    | bodies(requests)
    | bodies(args.map(lambda a: {"cmd": a[0], "args": a[1]}))
)
def test_parse_request_of_bytes_json_and_near_valid_requests(body: bytes) -> None:
    cmd = decoded(parse_request, body, 64 if len(body) % 16 == 0 else 1 << 20)
    if cmd is not None:
        assert type(cmd) is COMMANDS[cmd.cmd]
        assert_round_trips(cmd)
        if isinstance(cmd, Spawn):
            # What the daemon does with a spawn next: a bad policy is refused, never a crash.
            decoded(cmd.spawn_config)


@FUZZ
@given(args)
def test_every_command_from_args(name_args: tuple[str, dict[str, Any]]) -> None:
    # The envelope decoder hands a spawn's body to Spawn.from_args as it is: any JSON object.
    name, raw = name_args
    cmd = decoded(COMMANDS[name].from_args, raw)
    if cmd is not None:
        assert type(cmd) is COMMANDS[name]
        assert_round_trips(cmd)


# --- policy values ------------------------------------------------------------------------------

policy_keys = (
    st.sampled_from((*POLICY_KEYS, "x-", "x-a", "x-" + "k" * 62, "x-" + "k" * 63, "", "restart"))
    | texts
    | json_values
)


@FUZZ
@given(policy_keys, wire_values)
def test_check_policy_value(key: Any, value: Any) -> None:
    try:
        checked = check_policy_value(key, value)
    except VsmdError as err:
        assert isinstance(err, ProtocolError) and err.message
        return
    assert checked == value
    # An accepted value travels on in state deltas and replies: it must encode, wrapped.
    orjson.dumps({"ok": True, "result": {"body": {"entries": [{"x": checked}]}}})


# --- envelopes ----------------------------------------------------------------------------------

envelopes = near_valid(
    st.fixed_dictionaries(
        {"type": st.sampled_from(("ready", "state", "spawn")) | wire_text, "sender": wire_text},
        optional={
            "body": st.dictionaries(wire_text, wire_values, max_size=3),
            "id": wire_text,
            "time": st.integers(0, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False),
            "correlation": st.none() | wire_text,
            "path": wire_text,
            "v": st.just(1),
        },
    ),
    ("type", "sender", "body", "id", "time", "correlation", "path", "v"),
)


def check_envelope(raw: bytes) -> None:
    env = decoded(Envelope.decode, raw, LIMIT)
    if env is not None:
        assert isinstance(env, Envelope)
        # A body nested deeper than the encoder writes is taken (nobody sends an envelope on as
        # it came, and what carries one on checks its depth: spawn, state); anything else must
        # come back the same.
        if not depth_over(env.body, 250):
            assert Envelope.decode(env.encode(), 1 << 20) == env


@FUZZ
@given(st.binary(max_size=100) | bodies(any_values) | bodies(envelopes))
def test_envelope_decode_of_bytes_json_and_near_valid_envelopes(raw: bytes) -> None:
    check_envelope(raw)


# --- state snapshots ----------------------------------------------------------------------------

state_entries = near_valid(
    st.fixed_dictionaries(
        {
            "s": st.sampled_from(("data", "policy", "s" * 64)) | wire_text,
            "k": st.sampled_from(("k", "k" * 200)) | wire_text.filter(bool),
            "v": st.tuples(st.integers(0, 3), st.integers(0, 2**64 - 1), wire_text).map(list),
        },
        optional={"d": st.booleans(), "x": wire_values},
    ),
    ("s", "k", "v", "d", "x"),
)
snapshots = near_valid(
    st.fixed_dictionaries(
        {"schema": st.sampled_from((1, 2)), "entries": st.lists(state_entries, max_size=3)},
        optional={"seq": wire_values},
    ),
    ("schema", "entries"),
)


def check_state(raw: bytes) -> None:
    got = decoded(from_bytes, raw, LIMIT)
    if got is not None:
        entries, extra = got
        # The schema field is the decoder's own; everything else must come back as it was.
        again = to_bytes(entries, 1 << 20, **extra)
        assert from_bytes(again, 1 << 20) == (entries, extra)


@FUZZ
@given(st.binary(max_size=100) | bodies(any_values) | bodies(snapshots))
def test_state_from_bytes_of_bytes_json_and_near_valid_snapshots(raw: bytes) -> None:
    check_state(raw)


# --- what the fuzzing found ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH, 252, 600])
def test_a_spawn_config_nested_too_deep_is_refused(depth: int) -> None:
    # One spawn whose config was nested 252 levels made every later `list` fail: its reply
    # carries the config three levels further down, over the encoder's 254.
    body = to_json({"cmd": "spawn", "args": {"config": {"c": nested(depth - 1)}}}, True)
    if depth <= MAX_DEPTH:
        assert_round_trips(parse_request(body, 1 << 20))
        ok_reply([{"config": parse_request(body, 1 << 20).config}])  # type: ignore[attr-defined]
    else:
        with pytest.raises(ProtocolError, match="nested"):
            parse_request(body, 1 << 20)


@pytest.mark.parametrize("depth", [MAX_DEPTH, 260, 600])
def test_an_agent_policy_value_nested_too_deep_is_refused(depth: int) -> None:
    # policy_set applied such a value before encoding the delta failed: policy_show and state
    # of that VSM, and the journal's state writes, failed from then on.
    value: Any = 1
    for _ in range(depth):
        value = [value]
    if depth <= MAX_DEPTH:
        assert check_policy_value("x-deep", value) == value
    else:
        with pytest.raises(ProtocolError, match="nested"):
            check_policy_value("x-deep", value)


@pytest.mark.parametrize("depth", [MAX_DEPTH, 254, 600])
def test_a_state_field_nested_too_deep_is_refused(depth: int) -> None:
    # Unknown fields ride along in every later snapshot of the replica: one that could not be
    # written again made each journal write of that VSM's state fail.
    entry = {"s": "data", "k": "k", "v": [1, 0, "w"], "x": 1, "new": nested(depth - 1)}
    for snapshot in (
        {"schema": 1, "entries": [entry]},
        {"schema": 1, "entries": [], "new": nested(depth - 1)},
    ):
        raw = to_json(snapshot, True)
        if depth <= MAX_DEPTH:
            entries, extra = from_bytes(raw, 1 << 20)
            assert from_bytes(to_bytes(entries, 1 << 20, **extra), 1 << 20) == (entries, extra)
        else:
            with pytest.raises(ProtocolError, match="nested"):
                from_bytes(raw, 1 << 20)
