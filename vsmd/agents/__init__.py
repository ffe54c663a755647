"""Agents: what a VSM runs (its System 1). The AgentFactory fills a registry of types.

A module named in the config's ``agent_modules`` exposes ``register_agents(registry)``; the
daemon and the fork server both load it, so a spawn of an unknown type is refused up front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from vsmd import plugins
from vsmd.agents.types import AgentType, make_type
from vsmd.errors import ConfigError, NotFound
from vsmd.mcp.registry import McpGrant
from vsmd.tasks.api import TaskQueueApi


@dataclass(frozen=True)
class Sender:
    """Who sent a message: a VSM's id and path, or ``vsmd`` / ``vsmctl`` with an empty path."""

    id: str
    path: str


class StateApi(Protocol):
    """``ctx.state``: this VSM's state (see docs/state.md). Plain agents get the same with a
    blocking ``flush``."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def data(self) -> dict[str, Any]: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...

    def count(self, name: str, n: int = 1) -> None: ...

    def health(self, status: str) -> None: ...

    @property
    def policy(self) -> dict[str, Any]: ...

    def set_policy(self, key: str, value: Any) -> None: ...

    def child_states(self) -> dict[str, dict[str, dict[str, Any]]]: ...

    def child_get(self, child_id: str, key: str, default: Any = None) -> Any: ...


class AsyncStateApi(StateApi, Protocol):
    async def flush(self) -> None:
        """Returns once the daemon has journaled everything written before."""
        ...


class SyncStateApi(StateApi, Protocol):
    def flush(self) -> None: ...


class AgentContext(Protocol):
    """What an async agent may do from inside its VSM (every call runs on the VSM's loop).

    Targets are a VSM id, a path, or ``"parent"``. Errors are :class:`vsmd.errors.VsmdError`:
    ``UNREACHABLE`` (unknown or down, or it went down before it answered), ``TIMEOUT``,
    ``BROKER_UNAVAILABLE``, or the error the target answered with.
    """

    vsm_id: str
    name: str
    path: str
    depth: int
    config: dict[str, Any]
    state: AsyncStateApi
    mcp: McpGrant
    """Tools, resources and prompts this VSM's MCP server adds to those every VSM has."""
    capabilities: frozenset[str]
    """What this VSM's spawn granted its agent (docs/api.md, capabilities)."""

    @property
    def parent_id(self) -> str | None:
        """Its parent's id, None at the top level; a re-parenting changes it."""
        ...

    def mcp_client(self, target: str, timeout: float = 30.0) -> AbstractAsyncContextManager[Any]:
        """An initialized MCP ``ClientSession`` with this VSM or a descendant (id or path)."""
        ...

    async def spawn_child(
        self,
        name: str | None = None,
        agent: str | None = None,
        config: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Ask the daemon for a child VSM; its info once it is ready.

        ``policy`` takes the fields of :class:`vsmd.protocol.Policy` (restart, memory_mb...)."""
        ...

    async def send(self, target: str, kind: str, body: dict[str, Any] | None = None) -> None:
        """Deliver to the target's inbox (its agent's ``handle``); no answer expected."""
        ...

    async def request(
        self, target: str, kind: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        """Deliver and wait for the target agent's answer."""
        ...

    async def broadcast(
        self, kind: str, body: dict[str, Any] | None = None, depth: int | None = None
    ) -> None:
        """To every descendant (``depth=None``), the children (1), or ``depth`` levels down."""
        ...

    async def alert(self, severity: str, text: str, data: dict[str, Any] | None = None) -> None:
        """Algedonic signal: straight to the tree's root and the daemon (an ``alert`` event)."""
        ...

    def task_queue(self) -> TaskQueueApi:
        """This VSM's durable task queue (the ``worker`` type; needs ``messaging``)."""
        ...

    def request_stop(self, code: int = 0) -> None:
        """Leave the VSM's loop and exit with ``code``."""
        ...


class SyncContext(Protocol):
    """The same for a plain (synchronous) agent, whose methods run in the VSM's worker thread."""

    vsm_id: str
    name: str
    path: str
    depth: int
    config: dict[str, Any]
    state: SyncStateApi
    mcp: McpGrant
    capabilities: frozenset[str]

    @property
    def parent_id(self) -> str | None:
        """Its parent's id, None at the top level; a re-parenting changes it."""
        ...

    def spawn_child(
        self,
        name: str | None = None,
        agent: str | None = None,
        config: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def send(self, target: str, kind: str, body: dict[str, Any] | None = None) -> None: ...

    def request(
        self, target: str, kind: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any: ...

    def broadcast(
        self, kind: str, body: dict[str, Any] | None = None, depth: int | None = None
    ) -> None: ...

    def alert(self, severity: str, text: str, data: dict[str, Any] | None = None) -> None: ...

    def request_stop(self, code: int = 0) -> None: ...


class BaseAgent:
    """A plain agent: its methods run in a worker thread of the VSM, one call at a time, so
    they may block without stopping the VSM's replies and heartbeats. Override what you need.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self, ctx: SyncContext) -> None:
        return None

    def tick(self, ctx: SyncContext) -> None:
        return None

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        return {"echo": body, "kind": kind}

    def stop(self, ctx: SyncContext) -> None:
        return None


class AsyncAgent:
    """An agent on the VSM's event loop: it must not block (use ``asyncio.to_thread``).

    Calls may overlap: ``handle`` runs once per message, concurrently with ``tick``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    async def start(self, ctx: AgentContext) -> None:
        return None

    async def tick(self, ctx: AgentContext) -> None:
        return None

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        return {"echo": body, "kind": kind}

    async def stop(self, ctx: AgentContext) -> None:
        return None


Agent = BaseAgent | AsyncAgent
AgentFactory = Callable[[dict[str, Any]], Agent]


def overrides(agent: Agent, method: str) -> bool:
    """Whether the agent's class has its own ``method`` (the runtime skips the empty ones)."""
    base = AsyncAgent if isinstance(agent, AsyncAgent) else BaseAgent
    return getattr(type(agent), method, None) is not getattr(base, method)


class NoopAgent(AsyncAgent):
    """The backbone's default: keeps the VSM alive and answers pings."""


class AgentRegistry:
    """The AgentFactory: every agent type by name, with its config schema and capabilities."""

    def __init__(self) -> None:
        from vsmd.agents.api import ApiAgent
        from vsmd.agents.builtin import ReadingAgent, TreeAgent
        from vsmd.agents.llm_worker import LlmWorkerAgent
        from vsmd.agents.sensor import SensorAgent
        from vsmd.agents.worker import WorkerAgent

        self._types: dict[str, AgentType] = {}
        builtin: tuple[tuple[str, AgentFactory], ...] = (
            ("noop", NoopAgent),
            ("tree", TreeAgent),
            ("reading", ReadingAgent),
            ("sensor", SensorAgent),
            ("api", ApiAgent),
            ("llm_worker", LlmWorkerAgent),
            ("worker", WorkerAgent),
        )
        for name, factory in builtin:
            self.register(name, factory)

    def register(
        self,
        name: str,
        factory: AgentFactory,
        *,
        schema: dict[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
        description: str | None = None,
    ) -> None:
        """Add a type; schema, capabilities and description default to the class's own
        ``config_schema``, ``capabilities`` and docstring (vsmd.agents.types)."""
        self._types[name] = make_type(name, factory, schema, capabilities, description)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def get(self, name: str) -> AgentType:
        found = self._types.get(name)
        if found is None:
            raise NotFound(f"unknown agent type {name[:64]!r}; known: {', '.join(self.names())}")
        return found

    def validate(self, name: str, config: dict[str, Any]) -> None:
        """NotFound for an unknown type, InvalidConfig (one message per field) for bad settings."""
        self.get(name).validate(config)

    def describe(self) -> list[dict[str, Any]]:
        return [self._types[n].to_dict() for n in self.names()]

    def create(self, name: str, config: dict[str, Any]) -> Agent:
        agent: Agent = self.get(name).factory(config)
        return agent


ENTRY_POINTS = "vsmd.agents"


def _load_entry_points(registry: AgentRegistry) -> None:
    """Types of installed packages: an entry point in group ``vsmd.agents`` names an agent
    class (registered under the entry point's name) or a ``register_agents(registry)``."""
    for name, obj in plugins.entry_points(ENTRY_POINTS, "agent"):
        if isinstance(obj, type) and issubclass(obj, BaseAgent | AsyncAgent):
            registry.register(name, obj)
        elif callable(obj):
            obj(registry)
        else:
            raise ConfigError(f"agent entry point {name!r} is no agent class or function")


def build_registry(modules: Iterable[str]) -> AgentRegistry:
    registry = AgentRegistry()
    _load_entry_points(registry)
    for hook in plugins.module_hooks(modules, "register_agents", "agent"):
        hook(registry)
    return registry
