"""An MCP host and its clients wired back to back in memory (no broker), for unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.client.session import ClientSession

from vsmd.bus.topology import Topology
from vsmd.errors import Unreachable
from vsmd.mcp.client import open_session
from vsmd.mcp.host import Limits, McpHost
from vsmd.mcp.registry import Caller, McpRegistry
from vsmd.mcp.server import build_server
from vsmd.mcp.transport import ClientDispatcher
from vsmd.mcp.wire import Listener
from vsmd.protocol import Envelope

TOPO = Topology("unit")


class MemLink:
    """A broker of one VSM: what a client sends goes to the host, answers come back."""

    def __init__(self, host: McpHost, caller: Caller) -> None:
        self.host = host
        self.caller = caller
        self.listeners: dict[str, Listener] = {}
        self.down = False
        host._publish = self._answer  # the host's answers come back through us

    async def _answer(self, reply_to: str, corr: str, body: bytes) -> None:
        listener = self.listeners.get(corr)
        if listener is not None:
            await listener.on_message(body)

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        if self.down and mandatory:
            raise Unreachable("nobody is bound")
        env = Envelope.decode(body, 1 << 20)
        asyncio.get_running_loop().create_task(self.host.deliver(env, reply_to, self.caller))

    async def listen(self, correlation_id: str, listener: Listener) -> None:
        self.listeners[correlation_id] = listener

    def unlisten(self, correlation_id: str) -> None:
        self.listeners.pop(correlation_id, None)


def make_host(limits: Limits | None = None) -> tuple[McpHost, McpRegistry, asyncio.Event]:
    reg = McpRegistry()
    gate = asyncio.Event()

    async def status(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"ok": True, "role": caller.role}

    async def block(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        await gate.wait()
        return {"unblocked": True}

    async def spawn(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"spawned": True}

    reg.tool("status", status, read_only=True)
    reg.tool("block", block)
    reg.tool("spawn_child", spawn)

    async def publish(reply_to: str, corr: str, body: bytes) -> None:
        raise AssertionError("replaced by MemLink")

    host = McpHost(build_server(), reg, publish, "0123456789ab", "root", limits)
    return host, reg, gate


@asynccontextmanager
async def raw_session(link: MemLink) -> AsyncIterator[tuple[ClientDispatcher, ClientSession]]:
    """An initialized session and the dispatcher under it, for what the session hides."""
    async with (
        ClientDispatcher(link, "down.root", "VSM root", "tester") as dispatcher,
        ClientSession(read_timeout_seconds=10, dispatcher=dispatcher) as s,
    ):
        await s.initialize()
        yield dispatcher, s


@asynccontextmanager
async def session_of(link: MemLink) -> AsyncIterator[ClientSession]:
    async with open_session(link, TOPO, "root", "tester", timeout=10) as s:
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))
