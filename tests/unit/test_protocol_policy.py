"""The supervision part of the protocol: Policy, spawn's policy fields and the events command."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from vsmd.errors import ProtocolError, UnknownCommand
from vsmd.protocol import (
    POLICY_FIELDS,
    VERSION,
    Command,
    Events,
    Policy,
    Spawn,
    SpawnConfig,
    VsmInfo,
    parse_request,
)

LIMIT = 4096


def parse(cmd: str, args: dict[str, Any] | None = None) -> Command:
    data: dict[str, Any] = {"v": VERSION, "cmd": cmd}
    if args is not None:
        data["args"] = args
    return parse_request(orjson.dumps(data), LIMIT)


# --- Policy -----------------------------------------------------------------------------------


def test_empty_policy_means_the_daemons_defaults() -> None:
    policy = Policy()
    assert policy.validate() is policy
    assert policy.to_dict() == {}


def test_full_policy_is_valid_and_to_dict_keeps_what_is_set() -> None:
    policy = Policy(
        restart="permanent",
        on_parent_exit="abandon",
        on_child_failure="restart",
        memory_mb=64,
        cpu_percent=50.0,
        max_fds=100,
        max_procs=4,
        quota_action="terminate",
        max_children=3,
        budget_descendants=0,
        budget_memory_mb=128,
        capabilities=["state", "http"],
    )
    assert policy.validate() is policy
    assert set(policy.to_dict()) == set(POLICY_FIELDS)
    assert Policy(memory_mb=64).to_dict() == {"memory_mb": 64}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("restart", "sometimes"),
        ("on_parent_exit", "restart"),
        ("on_child_failure", "abandon"),
        ("quota_action", "ignore"),
        ("memory_mb", 0),
        ("max_fds", -1),
        ("max_procs", 0),
        ("max_children", 0),
        ("budget_memory_mb", 0),
        ("budget_descendants", -1),
        ("cpu_percent", 0.0),
        ("cpu_percent", -5.0),
        ("cpu_percent", 100.0 * 1024 + 1),
        ("capabilities", ["state", "teleport"]),
        ("capabilities", [5]),
    ],
)
def test_invalid_policy_values_name_their_field(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        Policy(**{field: value}).validate()
    assert info.value.code == "BAD_REQUEST"
    assert info.value.details == {"field": field}
    assert field in info.value.message


# --- spawn with policy fields -----------------------------------------------------------------


def test_spawn_parses_policy_fields() -> None:
    cmd = parse("spawn", {"name": "w", "restart": "permanent", "memory_mb": 64, "cpu_percent": 50})
    assert cmd == Spawn(name="w", restart="permanent", memory_mb=64, cpu_percent=50.0)
    assert isinstance(cmd, Spawn)
    assert type(cmd.cpu_percent) is float
    config = cmd.spawn_config()
    assert config == SpawnConfig(
        name="w", policy=Policy(restart="permanent", memory_mb=64, cpu_percent=50.0)
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"memory_mb": 1.5}, "memory_mb"),
        ({"memory_mb": True}, "memory_mb"),
        ({"restart": 1}, "restart"),
        ({"cpu_percent": "50"}, "cpu_percent"),
        ({"budget_descendants": [1]}, "budget_descendants"),
    ],
)
def test_spawn_policy_fields_are_typed(args: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse("spawn", args)
    assert info.value.details == {"field": field}


def test_spawn_config_validates_the_policy() -> None:
    cmd = parse("spawn", {"restart": "forever"})
    assert isinstance(cmd, Spawn)
    with pytest.raises(ProtocolError) as info:
        cmd.spawn_config()
    assert info.value.details == {"field": "restart"}


def test_spawn_of_a_config_round_trips() -> None:
    cfg = SpawnConfig(
        name="kid",
        agent="noop",
        settings={"x": [1]},
        policy=Policy(restart="temporary", budget_descendants=2),
    )
    cmd = Spawn.of("parent1", cfg)
    assert cmd.parent == "parent1"
    assert cmd.spawn_config() == cfg
    assert parse_request(orjson.dumps(cmd.to_request()), LIMIT) == cmd


def test_spawn_config_defaults() -> None:
    assert SpawnConfig() == SpawnConfig(name=None, agent=None, settings={}, policy=Policy())


# --- events -----------------------------------------------------------------------------------


def test_events_parses_with_defaults() -> None:
    assert parse("events") == Events(since=0, limit=1000)
    assert parse("events", {"since": 41, "limit": 5}) == Events(41, 5)
    assert parse_request(orjson.dumps(Events(3, 7).to_request()), LIMIT) == Events(3, 7)


@pytest.mark.parametrize(
    ("args", "field"),
    [({"since": "3"}, "since"), ({"limit": 1.5}, "limit"), ({"since": True}, "since")],
)
def test_events_fields_are_integers(args: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse("events", args)
    assert info.value.details == {"field": field}


def test_unknown_command_lists_events() -> None:
    with pytest.raises(UnknownCommand) as info:
        parse("nope")
    assert "events" in info.value.message


# --- VsmInfo ----------------------------------------------------------------------------------


def test_vsm_info_supervision_fields_default_and_round_trip() -> None:
    base: dict[str, Any] = {
        "id": "a",
        "name": "a",
        "parent": None,
        "path": "a",
        "depth": 1,
        "pid": None,
        "status": "backoff",
        "agent": "noop",
        "config": {},
        "started_at": None,
        "exit_code": 1,
        "children": [],
    }
    info = VsmInfo.from_dict(base)
    assert (info.next_restart, info.policy, info.metrics) == (None, {}, {})
    full = VsmInfo.from_dict(
        {**base, "next_restart": 5.5, "policy": {"restart": "permanent"}, "metrics": {"rss": 1}}
    )
    assert VsmInfo.from_dict(orjson.loads(orjson.dumps(full.to_dict()))) == full
