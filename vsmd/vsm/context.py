"""The narrow context an agent gets: messaging and children, never the runtime or credentials.

:class:`Context` serves async agents on the loop; :class:`ThreadContext` wraps it for plain
agents, whose methods run in a worker thread and wait on the loop for each call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from mcp.client.session import ClientSession

from vsmd.errors import ProtocolError, Unauthorized, Unreachable, from_dict
from vsmd.mcp.client import open_session
from vsmd.mcp.registry import McpGrant
from vsmd.protocol import Envelope, loads_object

if TYPE_CHECKING:
    from vsmd.vsm.runtime import VsmRuntime
    from vsmd.vsm.state import StateReplica
    from vsmd.vsm.task_queue import TaskQueue

T = TypeVar("T")
_ID = re.compile(r"[0-9a-f]{12}")
MAX_REPLY = 1 << 24
SEVERITIES = ("info", "warning", "error", "critical")


class Context:
    """Implements :class:`vsmd.agents.AgentContext`."""

    def __init__(self, runtime: VsmRuntime) -> None:
        spec = runtime.spec
        self._rt = runtime
        self.vsm_id = spec.vsm_id
        self.name = spec.name
        self.path = spec.path
        self.depth = spec.depth
        self.config = spec.config
        self.state = runtime.state
        self._caps = frozenset(spec.capabilities)
        self.capabilities = self._caps  # what its spawn granted (docs/api.md)
        self.mcp = McpGrant(runtime.mcp, "mcp" in self._caps, spec.path)
        self._tasks: TaskQueue | None = None

    @property
    def parent_id(self) -> str | None:
        """The last of its ancestors: a re-parenting changes them, and so this."""
        ancestors = self._rt.bus.ancestors
        return ancestors[-1] if ancestors else None

    def _need(self, capability: str) -> None:
        if capability not in self._caps:
            raise Unauthorized(f"VSM {self.path} was not granted the {capability} capability")

    # --- addressing ------------------------------------------------------------------------

    def _key(self, target: str) -> str:
        topo = self._rt.topo
        if target == "parent":
            if self.parent_id is None:
                raise Unreachable(f"{self.path} is at the top level: it has no parent VSM")
            return topo.to_parent_key(self.parent_id, self.vsm_id)
        if _ID.fullmatch(target):
            return topo.id_key(target)
        if not target or len(target) > 1000 or any(c in target for c in "*# "):
            raise ProtocolError(f"bad target {target[:64]!r}: an id, a path or 'parent'")
        return topo.down_key(target)

    def _envelope(self, kind: str, body: dict[str, Any] | None, **extra: Any) -> bytes:
        if not isinstance(kind, str) or not kind:
            raise ProtocolError("kind must be a non-empty string")
        return Envelope(
            type="call",
            sender=self.vsm_id,
            path=self.path,
            body={"kind": kind, "args": body or {}, **extra},
        ).encode()

    # --- the API ---------------------------------------------------------------------------

    async def send(self, target: str, kind: str, body: dict[str, Any] | None = None) -> None:
        self._need("messaging")
        await self._rt.bus.settled()  # "parent" is the new one after a re-parenting
        self._rt.bus.traffic.count_out()
        await self._rt.bus.publish(self._key(target), self._envelope(kind, body), mandatory=True)

    async def request(
        self, target: str, kind: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        self._need("messaging")
        await self._rt.bus.settled()
        key = self._key(target)
        self._rt.bus.traffic.count_out()
        return await self._rt.call(key, self._envelope(kind, body), timeout)

    async def broadcast(
        self, kind: str, body: dict[str, Any] | None = None, depth: int | None = None
    ) -> None:
        self._need("messaging")
        if depth is not None and (type(depth) is not int or depth < 1):
            raise ProtocolError("depth must be 1 or more, or None for the whole subtree")
        topo = self._rt.topo
        if depth == 1:
            key, extra = topo.children_key(self.vsm_id), {}
        else:
            # Every descendant has the subtree binding; those deeper than asked drop it.
            key, extra = topo.subtree_key(self.vsm_id), {"within": depth, "from_depth": self.depth}
        self._rt.bus.traffic.count_out()
        await self._rt.bus.publish(key, self._envelope(kind, body, **extra))

    async def alert(self, severity: str, text: str, data: dict[str, Any] | None = None) -> None:
        self._need("messaging")
        if severity not in SEVERITIES:
            raise ProtocolError(f"severity must be one of {', '.join(SEVERITIES)}")
        await self._rt.bus.settled()  # the root is the new one after a re-parenting
        root = self._rt.bus.ancestors[0] if self._rt.bus.ancestors else self.vsm_id
        body = {"severity": severity, "text": str(text)[:2000], "data": data or {}}
        key = self._rt.topo.alert_key(root, self.vsm_id)
        self._rt.bus.traffic.count_out()
        await self._rt.bus.publish(key, self._envelope("alert", body))

    async def spawn_child(
        self,
        name: str | None = None,
        agent: str | None = None,
        config: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self._need("spawn")
        # Policy fields (restart, memory_mb, budget_descendants ...) travel as in an admin spawn.
        body: dict[str, Any] = {**(policy or {}), "config": config or {}}
        if name is not None:
            body["name"] = name
        if agent is not None:
            body["agent"] = agent
        env = Envelope(type="spawn", sender=self.vsm_id, path=self.path, body=body)
        key = self._rt.topo.up_key(self.path, "spawn")
        result: dict[str, Any] = await self._rt.call(key, env.encode(), 60.0)
        return result

    def mcp_client(
        self, target: str, timeout: float = 30.0
    ) -> AbstractAsyncContextManager[ClientSession]:
        """An initialized MCP session with this VSM or one of its descendants (by id or
        path); others refuse it. ``async with ctx.mcp_client(child_id) as s: ...``"""
        return open_session(self._rt.bus, self._rt.topo, target, self.vsm_id, self.path, timeout)

    def task_queue(self) -> TaskQueue:
        """This VSM's durable task queue, as the worker agent type uses it (docs/agents.md)."""
        self._need("messaging")
        if self._tasks is None:
            from vsmd.vsm.task_queue import TaskQueue  # only a worker loads it

            self._tasks = TaskQueue(self._rt.bus, self._rt.topo, self._rt.spec)
        return self._tasks

    def request_stop(self, code: int = 0) -> None:
        self._rt.request_stop(code)


def unpack_reply(raw: bytes) -> Any:
    reply = loads_object(raw, MAX_REPLY)
    if reply.get("ok") is not True:
        raise from_dict(reply.get("error") or {})
    return reply.get("result")


class ThreadContext:
    """Implements :class:`vsmd.agents.SyncContext` for an agent running in a worker thread."""

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop
        self.vsm_id = ctx.vsm_id
        self.name = ctx.name
        self.path = ctx.path
        self.depth = ctx.depth
        self.config = ctx.config
        self.state = ThreadState(ctx.state, loop)
        self.mcp = ctx.mcp  # plain handlers registered here run in a worker thread
        self.capabilities = ctx.capabilities

    @property
    def parent_id(self) -> str | None:
        return self._ctx.parent_id

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def spawn_child(
        self,
        name: str | None = None,
        agent: str | None = None,
        config: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._run(self._ctx.spawn_child(name, agent, config, policy))

    def send(self, target: str, kind: str, body: dict[str, Any] | None = None) -> None:
        self._run(self._ctx.send(target, kind, body))

    def request(
        self, target: str, kind: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        return self._run(self._ctx.request(target, kind, body, timeout))

    def broadcast(
        self, kind: str, body: dict[str, Any] | None = None, depth: int | None = None
    ) -> None:
        self._run(self._ctx.broadcast(kind, body, depth))

    def alert(self, severity: str, text: str, data: dict[str, Any] | None = None) -> None:
        self._run(self._ctx.alert(severity, text, data))

    def request_stop(self, code: int = 0) -> None:
        self._loop.call_soon_threadsafe(self._ctx.request_stop, code)


class ThreadState:
    """``ctx.state`` for a plain agent: each call runs on the loop, which owns the replica."""

    def __init__(self, state: StateReplica, loop: asyncio.AbstractEventLoop) -> None:
        self._state = state
        self._loop = loop

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def get(self, key: str, default: Any = None) -> Any:
        return self._call(lambda: self._state.get(key, default))

    def data(self) -> dict[str, Any]:
        return self._call(self._state.data)

    def set(self, key: str, value: Any) -> None:
        self._call(lambda: self._state.set(key, value))

    def delete(self, key: str) -> None:
        self._call(lambda: self._state.delete(key))

    def gauge(self, name: str, value: float) -> None:
        self._call(lambda: self._state.gauge(name, value))

    def count(self, name: str, n: int = 1) -> None:
        self._call(lambda: self._state.count(name, n))

    def health(self, status: str) -> None:
        self._call(lambda: self._state.health(status))

    @property
    def policy(self) -> dict[str, Any]:
        return self._call(lambda: self._state.policy)

    def set_policy(self, key: str, value: Any) -> None:
        self._call(lambda: self._state.set_policy(key, value))

    def child_states(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._call(self._state.child_states)

    def child_get(self, child_id: str, key: str, default: Any = None) -> Any:
        return self._call(lambda: self._state.child_get(child_id, key, default))

    def flush(self) -> None:
        asyncio.run_coroutine_threadsafe(self._state.flush(), self._loop).result()
