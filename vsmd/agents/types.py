"""What an agent type is besides its class: the schema its settings must meet, checked by the
daemon before anything is forked, and the capabilities it declares it uses.

A type states them as class attributes (``config_schema``, ``capabilities``, and its
docstring's first line as description), or they are given to ``AgentRegistry.register``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema

from vsmd.errors import ConfigError, InvalidConfig
from vsmd.protocol import CAPABILITIES

# What a type that declares nothing gets: everything but the outside world.
DEFAULT_CAPABILITIES = frozenset({"messaging", "state", "spawn", "metrics", "mcp"})
ANY_CONFIG: dict[str, Any] = {"type": "object"}
MAX_ERRORS = 20  # per refusal: a config wrong everywhere still gets a readable answer


@dataclass(frozen=True)
class AgentType:
    name: str
    factory: Callable[[dict[str, Any]], Any]
    schema: dict[str, Any]
    capabilities: frozenset[str]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "config_schema": self.schema,
            "capabilities": sorted(self.capabilities),
        }

    def validate(self, config: dict[str, Any]) -> None:
        """InvalidConfig with one message per bad field, or nothing."""
        validator = jsonschema.Draft202012Validator(self.schema)
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        if not errors:
            return
        listed = [
            {
                "field": ".".join(str(p) for p in e.absolute_path) or "(settings)",
                "message": e.message,
            }
            for e in errors[:MAX_ERRORS]
        ]
        text = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
        raise InvalidConfig(f"agent {self.name!r} settings refused: {text}", errors=listed)


def make_type(
    name: str,
    factory: Callable[[dict[str, Any]], Any],
    schema: dict[str, Any] | None = None,
    capabilities: Iterable[str] | None = None,
    description: str | None = None,
) -> AgentType:
    """The type of ``factory``; what is not given comes from its class attributes."""
    schema = schema if schema is not None else getattr(factory, "config_schema", ANY_CONFIG)
    caps = capabilities if capabilities is not None else getattr(factory, "capabilities", None)
    granted = frozenset(caps) if caps is not None else DEFAULT_CAPABILITIES
    unknown = granted - set(CAPABILITIES)
    if unknown:
        raise ConfigError(
            f"agent type {name!r}: unknown capabilities {sorted(unknown)}; "
            f"known: {', '.join(CAPABILITIES)}"
        )
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ConfigError(f"agent type {name!r}: config_schema must be a JSON schema of an object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"agent type {name!r}: config_schema is no JSON schema: {exc.message}"
        ) from None
    if description is None:
        doc = (getattr(factory, "__doc__", None) or "").strip()
        description = doc.splitlines()[0] if doc else ""
    return AgentType(name, factory, schema, granted, description)
