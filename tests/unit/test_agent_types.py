"""The AgentFactory's side of agent types: schemas and capabilities from the class or the
registration, settings checked field by field, and types found through entry points."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from vsmd.agents import AgentRegistry, AsyncAgent, build_registry
from vsmd.errors import ConfigError, InvalidConfig, NotFound


class Sized(AsyncAgent):
    """Has a size."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"size": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
        "required": ["size"],
        "additionalProperties": False,
    }
    capabilities: ClassVar[frozenset[str]] = frozenset({"state", "http"})


def test_a_type_takes_schema_capabilities_and_description_from_its_class() -> None:
    reg = AgentRegistry()
    reg.register("sized", Sized)
    [described] = [t for t in reg.describe() if t["name"] == "sized"]
    assert described == {
        "name": "sized",
        "description": "Has a size.",
        "config_schema": Sized.config_schema,
        "capabilities": ["http", "state"],
    }
    noop = next(t for t in reg.describe() if t["name"] == "noop")
    assert noop["capabilities"] == ["mcp", "messaging", "metrics", "spawn", "state"]
    assert {"noop", "tree", "reading", "sized"} <= set(reg.names())


def test_settings_are_checked_field_by_field() -> None:
    reg = AgentRegistry()
    reg.register("sized", Sized)
    reg.validate("sized", {"size": 3})
    with pytest.raises(InvalidConfig) as refused:
        reg.validate("sized", {"size": 0, "name": 5, "colour": "red"})
    fields = [e["field"] for e in refused.value.details["errors"]]
    assert fields == ["(settings)", "name", "size"]
    assert "'colour' was unexpected" in refused.value.message
    assert "0 is less than the minimum of 1" in refused.value.message
    with pytest.raises(InvalidConfig, match="'size' is a required property"):
        reg.validate("sized", {})
    with pytest.raises(InvalidConfig, match="fanout: 'x' is not of type 'integer'"):
        reg.validate("tree", {"fanout": "x"})
    with pytest.raises(NotFound, match="unknown agent type 'nope'"):
        reg.validate("nope", {})


def test_a_bad_declaration_is_refused_at_registration() -> None:
    reg = AgentRegistry()
    with pytest.raises(ConfigError, match="unknown capabilities \\['teleport'\\]"):
        reg.register("x", Sized, capabilities=["teleport"])
    with pytest.raises(ConfigError, match="JSON schema of an object"):
        reg.register("x", Sized, schema={"type": "string"})
    with pytest.raises(ConfigError, match="is no JSON schema"):
        reg.register("x", Sized, schema={"type": "object", "properties": {"a": {"type": 5}}})


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """A package installed the way pip leaves one: a module and a dist-info with entry points."""
    (tmp_path / "extra_agents.py").write_text(
        "from vsmd.agents import AsyncAgent\n"
        "class Greeter(AsyncAgent):\n"
        "    '''Says hello.'''\n"
        "def register_agents(registry):\n"
        "    registry.register('greeter2', Greeter, description='Says hello, again.')\n"
    )
    info = tmp_path / "extra_agents-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-agents\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[vsmd.agents]\ngreeter = extra_agents:Greeter\nmore = extra_agents:register_agents\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("extra_agents", None)


def test_installed_packages_add_types_through_entry_points(installed: Path) -> None:
    reg = build_registry([])
    described = {t["name"]: t["description"] for t in reg.describe()}
    assert described["greeter"] == "Says hello."
    assert described["greeter2"] == "Says hello, again."


def test_a_broken_entry_point_stops_the_start_with_its_name(installed: Path) -> None:
    (installed / "extra_agents-1.0.dist-info" / "entry_points.txt").write_text(
        "[vsmd.agents]\nbroken = extra_agents:Missing\n"
    )
    with pytest.raises(ConfigError, match="cannot load agent entry point 'broken'"):
        build_registry([])
