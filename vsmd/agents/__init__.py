"""Agents: what a VSM runs (its System 1). The AgentFactory fills a registry of types.

A module named in the config's ``agent_modules`` exposes ``register_agents(registry)``; the
daemon and the fork server both load it, so a spawn of an unknown type is refused up front.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from vsmd.errors import ConfigError, NotFound


class AgentContext(Protocol):
    """What an agent may do from inside its VSM."""

    vsm_id: str
    name: str
    path: str
    depth: int
    config: dict[str, Any]

    def spawn_child(
        self,
        name: str | None = None,
        agent: str | None = None,
        config: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Ask the daemon for a child VSM; returns its info, raises VsmdError on refusal.

        ``policy`` takes the fields of :class:`vsmd.protocol.Policy` (restart, memory_mb...)."""
        ...

    def request_stop(self, code: int = 0) -> None:
        """Leave the VSM's loop and exit with ``code``."""
        ...


class Agent(Protocol):
    def start(self, ctx: AgentContext) -> None: ...

    def tick(self, ctx: AgentContext) -> None: ...

    def handle(self, ctx: AgentContext, kind: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def stop(self, ctx: AgentContext) -> None: ...


AgentFactory = Callable[[dict[str, Any]], Agent]


class BaseAgent:
    """An agent that does nothing; subclasses override what they need."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self, ctx: AgentContext) -> None:
        return None

    def tick(self, ctx: AgentContext) -> None:
        return None

    def handle(self, ctx: AgentContext, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"echo": body, "kind": kind}

    def stop(self, ctx: AgentContext) -> None:
        return None


class NoopAgent(BaseAgent):
    """The backbone's default: keeps the VSM alive and answers pings."""


class AgentRegistry:
    def __init__(self) -> None:
        from vsmd.agents.builtin import TreeAgent

        self._factories: dict[str, AgentFactory] = {"noop": NoopAgent, "tree": TreeAgent}

    def register(self, name: str, factory: AgentFactory) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def create(self, name: str, config: dict[str, Any]) -> Agent:
        factory = self._factories.get(name)
        if factory is None:
            raise NotFound(f"unknown agent type {name!r}; known: {', '.join(self.names())}")
        return factory(config)


def build_registry(modules: Iterable[str]) -> AgentRegistry:
    registry = AgentRegistry()
    for mod_name in modules:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import agent module {mod_name!r}: {exc}") from None
        hook = getattr(module, "register_agents", None)
        if not callable(hook):
            raise ConfigError(f"agent module {mod_name!r} has no register_agents(registry)")
        hook(registry)
    return registry
