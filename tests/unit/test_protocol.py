"""The wire protocol: admin requests, replies, the bus envelope, VsmInfo and error rebuilding."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from vsmd.errors import (
    BadJson,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    TooLarge,
    UnknownCommand,
)
from vsmd.protocol import (
    VERSION,
    Command,
    Envelope,
    ListVsms,
    Ping,
    Show,
    Spawn,
    Terminate,
    VsmInfo,
    check_policy_value,
    error_reply,
    ok_reply,
    parse_request,
)

LIMIT = 4096


def request(cmd: Any, args: Any = None, **extra: Any) -> bytes:
    data: dict[str, Any] = {"v": VERSION, "cmd": cmd, **extra}
    if args is not None:
        data["args"] = args
    return orjson.dumps(data)


def parse(cmd: Any, args: Any = None, **extra: Any) -> Command:
    return parse_request(request(cmd, args, **extra), LIMIT)


# --- valid requests ---------------------------------------------------------------------------


def test_ping_parses() -> None:
    assert parse("ping") == Ping()
    assert parse("ping", {}) == Ping()


def test_version_and_args_may_be_left_out() -> None:
    assert parse_request(b'{"cmd": "ping"}', LIMIT) == Ping()


def test_spawn_parses_every_field() -> None:
    cmd = parse(
        "spawn", {"parent": "abc", "name": "worker", "agent": "noop", "config": {"k": [1, 2]}}
    )
    assert cmd == Spawn(parent="abc", name="worker", agent="noop", config={"k": [1, 2]})


def test_spawn_defaults() -> None:
    cmd = parse("spawn", {})
    assert cmd == Spawn(parent=None, name=None, agent=None, config={})


def test_spawn_accepts_null_for_optional_strings() -> None:
    assert parse("spawn", {"parent": None, "name": None}) == Spawn()


def test_list_parses() -> None:
    assert parse("list") == ListVsms(parent=None, recursive=True)
    assert parse("list", {"parent": "p1", "recursive": False}) == ListVsms("p1", False)


def test_show_parses() -> None:
    assert parse("show", {"id": "abc123"}) == Show(id="abc123")


def test_terminate_parses_and_makes_timeout_a_float() -> None:
    cmd = parse("terminate", {"id": "abc", "timeout": 5})
    assert cmd == Terminate(id="abc", timeout=5.0)
    assert isinstance(cmd, Terminate)
    assert type(cmd.timeout) is float
    assert parse("terminate", {"id": "abc"}) == Terminate(id="abc", timeout=None)
    assert parse("terminate", {"id": "abc", "timeout": 0.25}) == Terminate("abc", 0.25)


@pytest.mark.parametrize(
    "cmd",
    [
        Ping(),
        Spawn(parent="p", name="n", agent="a", config={"x": 1}),
        Spawn(),
        ListVsms(parent="p", recursive=False),
        Show(id="s"),
        Terminate(id="t", timeout=2.5),
        Terminate(id="t"),
    ],
)
def test_to_request_round_trips(cmd: Command) -> None:
    req = cmd.to_request()
    assert req["v"] == VERSION
    assert req["cmd"] == cmd.cmd
    assert parse_request(orjson.dumps(req), LIMIT) == cmd


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"cmd": "ping"', b"\xff\xfe"])
def test_not_json_is_bad_json(body: bytes) -> None:
    with pytest.raises(BadJson) as info:
        parse_request(body, LIMIT)
    assert info.value.code == "BAD_JSON"
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "list"), (b'"ping"', "str"), (b"null", "NoneType"), (b"7", "int")],
)
def test_json_that_is_not_an_object_is_a_bad_request(body: bytes, kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(body, LIMIT)
    assert type(info.value) is ProtocolError
    assert info.value.code == "BAD_REQUEST"
    assert kind in info.value.message


def test_unknown_command() -> None:
    with pytest.raises(UnknownCommand) as info:
        parse("explode")
    assert info.value.code == "UNKNOWN_COMMAND"
    assert "'explode'" in info.value.message
    for known in ("ping", "spawn", "list", "show", "terminate"):
        assert known in info.value.message


def test_unknown_command_name_is_cut_in_the_message() -> None:
    with pytest.raises(UnknownCommand) as info:
        parse("x" * 1000)
    assert len(info.value.message) < 200


@pytest.mark.parametrize("cmd", [None, 5, ["ping"], {"name": "ping"}])
def test_cmd_must_be_a_string(cmd: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(cmd)
    assert type(info.value) is ProtocolError
    assert info.value.details == {"field": "cmd"}


def test_cmd_missing() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(b'{"v": 1, "args": {}}', LIMIT)
    assert info.value.details == {"field": "cmd"}


@pytest.mark.parametrize("args", [[], "id=1", 5, None])
def test_args_must_be_an_object(args: Any) -> None:
    body = orjson.dumps({"v": 1, "cmd": "show", "args": args})
    with pytest.raises(ProtocolError) as info:
        parse_request(body, LIMIT)
    assert info.value.code == "BAD_REQUEST"
    assert info.value.details == {"field": "args"}


@pytest.mark.parametrize(("cmd", "missing"), [("show", "id"), ("terminate", "id")])
def test_missing_field(cmd: str, missing: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(cmd, {})
    err = info.value
    assert type(err) is ProtocolError
    assert err.code == "BAD_REQUEST"
    assert err.details == {"field": missing}
    assert err.to_dict() == {
        "code": "BAD_REQUEST",
        "message": f"{cmd}: missing field {missing!r}",
        "details": {"field": missing},
    }


@pytest.mark.parametrize(
    ("cmd", "args", "field"),
    [
        ("show", {"id": 5}, "id"),
        ("show", {"id": None}, "id"),
        ("show", {"id": True}, "id"),
        ("list", {"recursive": "yes"}, "recursive"),
        ("list", {"recursive": 1}, "recursive"),
        ("list", {"parent": 3}, "parent"),
        ("terminate", {"id": "x", "timeout": True}, "timeout"),
        ("terminate", {"id": "x", "timeout": "5"}, "timeout"),
        ("terminate", {"id": "x", "timeout": [5]}, "timeout"),
        ("spawn", {"config": []}, "config"),
        ("spawn", {"config": "a=1"}, "config"),
        ("spawn", {"name": 5}, "name"),
        ("spawn", {"parent": False}, "parent"),
        ("spawn", {"agent": {"type": "noop"}}, "agent"),
    ],
)
def test_wrong_typed_field(cmd: str, args: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(cmd, args)
    assert type(info.value) is ProtocolError
    assert info.value.code == "BAD_REQUEST"
    assert info.value.details == {"field": field}
    assert repr(field) in info.value.message


@pytest.mark.parametrize(
    ("cmd", "args", "field"),
    [
        ("show", {"id": "x", "extra": 1}, "extra"),
        ("ping", {"verbose": True}, "verbose"),
        ("terminate", {"id": "x", "zz": 1, "force": True}, "force"),
    ],
)
def test_unknown_field(cmd: str, args: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(cmd, args)
    assert type(info.value) is ProtocolError
    assert info.value.code == "BAD_REQUEST"
    assert info.value.details == {"field": field}
    assert field in info.value.message


def test_body_over_the_limit_is_too_large() -> None:
    body = request("show", {"id": "x" * 200})
    assert parse_request(body, len(body)) == Show(id="x" * 200)  # exactly at the limit is fine
    with pytest.raises(TooLarge) as info:
        parse_request(body, len(body) - 1)
    assert info.value.code == "TOO_LARGE"
    assert str(len(body)) in info.value.message


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(TooLarge):
        parse_request(b"x" * 100, 10)


@pytest.mark.parametrize("version", [2, 0, "1", None, [1]])
def test_wrong_version(version: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(orjson.dumps({"v": version, "cmd": "ping"}), LIMIT)
    assert type(info.value) is ProtocolError
    assert info.value.code == "BAD_REQUEST"
    assert "version" in info.value.message


@pytest.mark.parametrize("version", [b"true", b"1.0"])
def test_boolean_or_float_version_is_refused(version: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(b'{"v": ' + version + b', "cmd": "ping"}', LIMIT)
    assert "version" in info.value.message


def test_envelope_with_a_boolean_version_is_refused() -> None:
    with pytest.raises(ProtocolError):
        Envelope.decode(b'{"type": "ready", "sender": "s", "v": true}', LIMIT)


# --- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("result", [None, {"a": 1}, [1, "x"], "text", 3])
def test_ok_reply_shape(result: Any) -> None:
    assert orjson.loads(ok_reply(result)) == {"ok": True, "result": result}


def test_error_reply_shape() -> None:
    assert orjson.loads(error_reply(NotFound("no such VSM"))) == {
        "ok": False,
        "error": {"code": "NOT_FOUND", "message": "no such VSM"},
    }


def test_error_reply_carries_details_when_there_are_some() -> None:
    err = QuotaExceeded("too deep", limit="max_depth", value=9, max=8)
    assert orjson.loads(error_reply(err)) == {
        "ok": False,
        "error": {
            "code": "QUOTA_EXCEEDED",
            "message": "too deep",
            "details": {"limit": "max_depth", "value": 9, "max": 8},
        },
    }


# --- envelope ---------------------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    env = Envelope(type="spawn", sender="abc123", body={"name": "kid", "n": [1.5]}, correlation="c")
    decoded = Envelope.decode(env.encode(), LIMIT)
    assert decoded == env
    assert decoded.v == VERSION


def test_envelope_defaults() -> None:
    a = Envelope(type="ready", sender="s")
    b = Envelope(type="ready", sender="s")
    assert a.body == {}
    assert a.correlation is None
    assert len(a.id) == 32
    assert a.id != b.id
    assert isinstance(a.time, float)
    assert Envelope.decode(a.encode(), LIMIT) == a


def test_envelope_decode_with_only_required_fields() -> None:
    env = Envelope.decode(b'{"type": "ready", "sender": "s"}', LIMIT)
    assert (env.type, env.sender, env.body, env.v) == ("ready", "s", {}, VERSION)


@pytest.mark.parametrize(
    "data",
    [
        {"sender": "s"},  # no type
        {"type": "ready"},  # no sender
        {"type": "ready", "sender": "s", "surprise": 1},  # unknown key
        {"type": "ready", "sender": "s", "v": 2},
        {"type": 5, "sender": "s"},
        {"type": "ready", "sender": None},
        {"type": "ready", "sender": "s", "body": []},
        {"type": "ready", "sender": "s", "body": None},
        {"type": "ready", "sender": "s", "body": "x"},
    ],
)
def test_envelope_rejections(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        Envelope.decode(orjson.dumps(data), LIMIT)
    assert type(info.value) is ProtocolError
    assert info.value.code == "BAD_REQUEST"
    assert "envelope" in info.value.message


def test_envelope_rejects_non_json_non_objects_and_oversize() -> None:
    with pytest.raises(BadJson):
        Envelope.decode(b"{", LIMIT)
    with pytest.raises(ProtocolError) as info:
        Envelope.decode(b"[]", LIMIT)
    assert info.value.code == "BAD_REQUEST"
    raw = Envelope(type="ready", sender="s", body={"pad": "x" * 100}).encode()
    with pytest.raises(TooLarge):
        Envelope.decode(raw, len(raw) - 1)


# --- VsmInfo ----------------------------------------------------------------------------------


def sample_info() -> VsmInfo:
    return VsmInfo(
        id="abc",
        name="alpha",
        parent="root1",
        path="root.alpha",
        depth=2,
        pid=4242,
        status="running",
        agent="noop",
        config={"k": "v"},
        started_at=1700000000.5,
        exit_code=None,
        children=["c1", "c2"],
        restarts=1,
        last_exit="exit code 3",
        last_reason="exited on its own (exit code 3)",
    )


def test_vsm_info_round_trip() -> None:
    info = sample_info()
    data = info.to_dict()
    assert data["path"] == "root.alpha"
    assert data["children"] == ["c1", "c2"]
    assert VsmInfo.from_dict(data) == info
    assert VsmInfo.from_dict(orjson.loads(orjson.dumps(data))) == info


def test_vsm_info_from_dict_ignores_unknown_keys() -> None:
    data = sample_info().to_dict()
    data["added_in_a_later_version"] = {"x": 1}
    assert VsmInfo.from_dict(data) == sample_info()


def test_vsm_info_from_dict_fills_defaults() -> None:
    data = sample_info().to_dict()
    for key in ("restarts", "last_exit", "last_reason"):
        del data[key]
    info = VsmInfo.from_dict(data)
    assert (info.restarts, info.last_exit, info.last_reason) == (0, None, None)


@pytest.mark.parametrize(
    "args",
    [
        {"budget_descendants": -(2**63) - 1},
        {"memory_mb": 2**64},
        {"config": {"n": 2**64}},
    ],
)
def test_values_json_cannot_send_back_are_refused(args: dict[str, object]) -> None:
    # From Python (the client API) such a value got in, then broke every reply that carried it.
    with pytest.raises(ProtocolError):
        Spawn.from_args(args)


def test_policy_values_json_cannot_send_on_are_refused() -> None:
    with pytest.raises(ProtocolError):
        check_policy_value("x-big", [2**70])
    with pytest.raises(ProtocolError):
        check_policy_value("max_children", 2**64)


def test_vsm_info_from_a_whole_dict_is_still_frozen_and_equal() -> None:
    info = VsmInfo.from_dict(sample_info().to_dict())
    assert info == sample_info() and info.to_dict() == sample_info().to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.status = "exited"  # type: ignore[misc]


def test_vsm_info_from_dict_without_a_required_field_is_refused() -> None:
    data = sample_info().to_dict()
    del data["path"]
    with pytest.raises(TypeError, match="path"):
        VsmInfo.from_dict(data)


def test_vsm_info_adopts_a_decoded_dict_and_from_dict_copies() -> None:
    data = orjson.loads(orjson.dumps(sample_info().to_dict()))
    adopted = VsmInfo.adopt(data)
    assert adopted == sample_info()
    assert adopted.__dict__ is data  # no copy: the reply's dict is the object's
    with pytest.raises(dataclasses.FrozenInstanceError):
        adopted.name = "other"  # type: ignore[misc]
    mine = sample_info().to_dict()
    copied = VsmInfo.from_dict(mine)
    mine["status"] = "exited"  # the caller's dict stays the caller's
    assert copied.status == sample_info().status


def test_vsm_info_adopt_of_a_partial_or_newer_dict_takes_the_careful_way() -> None:
    newer = {**sample_info().to_dict(), "added_in_a_later_version": 1}
    assert VsmInfo.adopt(newer) == sample_info()
    assert not hasattr(VsmInfo.adopt(newer), "added_in_a_later_version")
    older = sample_info().to_dict()
    del older["refused"]
    assert VsmInfo.adopt(older).refused == 0
    # As many keys as fields, one of them unknown: not taken as a whole record either.
    swapped = sample_info().to_dict()
    del swapped["restarts"]
    swapped["unknown"] = 5
    info = VsmInfo.adopt(swapped)
    assert info.restarts == 0 and not hasattr(info, "unknown")
