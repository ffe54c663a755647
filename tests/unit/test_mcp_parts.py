"""The MCP host and client transport wired back to back in memory (no broker): sessions, the
caller's authority, bounded buffers (BUSY), the session cap, and a session opened again after
the VSM forgot it (a restart), transparently to the SDK's ClientSession."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError

from vsmd.bus.topology import Topology
from vsmd.errors import Unreachable
from vsmd.mcp import wire
from vsmd.mcp.client import open_session
from vsmd.mcp.host import Limits, McpHost
from vsmd.mcp.registry import FULL, NONE, READ, Caller, McpRegistry
from vsmd.mcp.server import build_server
from vsmd.mcp.transport import ClientDispatcher, Listener
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
async def session_of(link: MemLink) -> AsyncIterator[ClientSession]:
    async with open_session(link, TOPO, "root", "tester", timeout=10) as s:
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_session_lists_and_calls_with_the_callers_role() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        async with session_of(MemLink(host, Caller("vsmctl", "", FULL))) as s:
            names = {t.name for t in (await s.list_tools()).tools}
            assert names == {"status", "block", "spawn_child"}
            assert (await s.call_tool("status", {})).structured_content == {
                "ok": True,
                "role": FULL,
            }
        assert host.sessions == {}  # the client's close ended it

    run(main())


def test_a_viewer_reads_but_may_not_act_and_a_stranger_gets_nothing() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        async with session_of(MemLink(host, Caller("vsmctl", "", READ, "vsmd-viewer"))) as s:
            assert (await s.call_tool("status", {})).structured_content == {
                "ok": True,
                "role": READ,
            }
            with pytest.raises(MCPError) as refused:
                await s.call_tool("spawn_child", {})
        assert refused.value.code == wire.UNAUTHORIZED
        assert "may not call spawn_child on root: viewers may only read" in refused.value.message
        with pytest.raises(MCPError) as stranger:
            async with session_of(MemLink(host, Caller("aaaaaaaaaaaa", "root.b", NONE))):
                pass
        assert stranger.value.code == wire.UNAUTHORIZED
        assert "VSM root.b has no authority over root" in stranger.value.message

    run(main())


def test_a_full_session_buffer_answers_busy_instead_of_growing() -> None:
    async def main() -> None:
        host, _reg, gate = make_host(Limits(buffer=2))
        async with session_of(MemLink(host, Caller("vsmctl", "", FULL))) as s:
            calls = [asyncio.ensure_future(s.call_tool("block", {})) for _ in range(40)]
            # The BUSY answers come at once, while the served calls wait for the gate.
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            gate.set()
            results = await asyncio.gather(*calls, return_exceptions=True)
        busy = [r for r in results if isinstance(r, MCPError) and r.code == wire.BUSY]
        served = [r for r in results if not isinstance(r, BaseException)]
        assert busy and served and len(busy) + len(served) == 40, results
        assert host.busy == len(busy)


def test_a_forgotten_session_is_opened_again_and_the_call_goes_through() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        link = MemLink(host, Caller("vsmctl", "", FULL))
        async with (
            ClientDispatcher(link, "down.root", "VSM root", "tester") as dispatcher,
            ClientSession(read_timeout_seconds=10, dispatcher=dispatcher) as s,
        ):
            await s.initialize()
            for key in list(host.sessions):
                host._close(key)  # as after a restart: the VSM holds no session
            res = await s.call_tool("status", {})
            assert res.structured_content == {"ok": True, "role": FULL}
            assert dispatcher.reopened == 1
        assert host.refused == 1  # the one request that found no session

    run(main())


def test_the_session_cap_closes_the_least_recently_used() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host(Limits(max_sessions=2))
        link = MemLink(host, Caller("vsmctl", "", FULL))
        async with session_of(link) as first, session_of(link) as second:
            await first.call_tool("status", {})
            await second.call_tool("status", {})
            async with session_of(link) as third:
                assert len(host.sessions) == 2
                await third.call_tool("status", {})
                # The first was closed to make room; its next call opens it again.
                assert (await first.call_tool("status", {})).structured_content is not None
                assert len(host.sessions) == 2

    run(main())


def test_a_vsm_that_is_down_fails_the_call_at_once() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        link = MemLink(host, Caller("vsmctl", "", FULL))
        async with session_of(link) as s:
            link.down = True
            with pytest.raises(MCPError) as failed:
                await s.call_tool("status", {})
            assert failed.value.code == wire.UNREACHABLE
            assert failed.value.message == "VSM root is unknown or down"
            link.down = False
            assert (await s.call_tool("status", {})).structured_content is not None

    run(main())

    run(main())
