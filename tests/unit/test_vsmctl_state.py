"""vsmctl's state commands without a daemon: KEY=VALUE parsing, deltas for watch, rendering."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from vsmctl.app import app
from vsmctl.client import _delta
from vsmctl.render_state import change_lines, identity_line, subtree_line, text
from vsmctl.state_cmds import parse_policy_pairs
from vsmd.errors import ProtocolError
from vsmd.protocol import Envelope
from vsmd.state import Entry, Version, encode

# --- KEY=VALUE ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("x-mode=safe", {"x-mode": "safe"}),
        ("max_children=5", {"max_children": 5}),
        ("cpu_percent=12.5", {"cpu_percent": 12.5}),
        ("x-list=[1,2]", {"x-list": [1, 2]}),
        ("x-on=true", {"x-on": True}),
        ('x-code="5"', {"x-code": "5"}),  # quoted: a string, though it reads as a number
        ("x-mode=", {"x-mode": None}),  # empty: delete
        ("x-mode=null", {"x-mode": None}),
        ("x-url=a=b", {"x-url": "a=b"}),  # only the first = splits
        ("x-text=two words", {"x-text": "two words"}),
    ],
)
def test_values_are_json_when_they_parse_else_strings(pair: str, expected: dict[str, Any]) -> None:
    assert parse_policy_pairs([pair]) == expected


def test_several_pairs_make_one_request() -> None:
    assert parse_policy_pairs(["max_children=5", "x-mode=safe"]) == {
        "max_children": 5,
        "x-mode": "safe",
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["x-mode"], "wants KEY=VALUE"),
        (["=5"], "wants KEY=VALUE"),
        (["x-list=[1,2"], "not valid JSON"),
        (['x-obj={"a":'], "not valid JSON"),
        (['x-s="open'], "not valid JSON"),
        (["x-a=1", "x-a=2"], "given twice"),
        ([], "no KEY=VALUE"),
    ],
)
def test_malformed_pairs_are_refused(pairs: list[str], message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        parse_policy_pairs(pairs)
    assert err.value.code == "BAD_REQUEST"


def test_the_cli_refuses_a_malformed_pair_before_it_connects() -> None:
    # The broker URL goes nowhere: a refusal that needed the daemon would exit 3 instead.
    result = CliRunner().invoke(
        app, ["policy", "set", "abc", "x-list=[1,2", "--broker", "amqp://nobody@127.0.0.1:1/"]
    )
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("vsmctl: BAD_REQUEST: x-list=[1,2: the value is not valid JSON")


# --- deltas for watch ---------------------------------------------------------------------------


def _raw(sender: str = "g1", kind: str = "state", body: dict[str, Any] | None = None) -> bytes:
    entries = {
        ("metrics", "c.hits"): Entry(2, Version(1000, 0, sender)),
        ("data", "gone"): Entry(None, Version(1000, 1, sender), deleted=True),
    }
    body = encode(entries) if body is None else body
    return Envelope(type=kind, sender=sender, path="r.m.g", body=body, time=12.5).encode()


def test_a_delta_lists_every_change_and_delete() -> None:
    assert _delta(_raw(), "g1", "r.m.g") == {
        "time": 12.5,
        "id": "g1",
        "path": "r.m.g",
        "changes": [
            {"section": "data", "key": "gone", "deleted": True},
            {"section": "metrics", "key": "c.hits", "value": 2},
        ],
    }


@pytest.mark.parametrize(
    "raw",
    [
        _raw(sender="other"),  # a VSM that had the path before, or a forgery
        _raw(kind="ready"),
        _raw(body={"schema": 1, "entries": [{"s": "data"}]}),
        b"not json",
    ],
)
def test_anything_else_on_the_key_is_skipped(raw: bytes) -> None:
    assert _delta(raw, "g1", "r.m.g") is None


# --- rendering ----------------------------------------------------------------------------------


def test_watch_lines_one_per_change() -> None:
    delta = _delta(_raw(), "g1", "r.m.g")
    assert delta is not None
    lines = change_lines(delta)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "r.m.g data gone deleted",
        "r.m.g metrics c.hits = 2",
    ]


def test_values_and_summaries_read_plainly() -> None:
    assert text("safe") == "safe"
    assert text({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'
    assert subtree_line({"count": 3, "worst_health": "degraded", "counters": {"hits": 4}}) == (
        "3 VSM(s), worst health degraded, counters hits=4"
    )
    assert subtree_line(None) == "-"
    view = {"id": "g1", "path": "r.m.g", "identity": {"name": "g", "depth": 3, "parent": "m1"}}
    assert identity_line(view) == "r.m.g (id g1, name g, depth 3, parent m1)"
