"""The MCP host and client transport wired back to back in memory (no broker): sessions, the
caller's authority, bounded buffers (BUSY), the session cap, and a session opened again after
the VSM forgot it (a restart), transparently to the SDK's ClientSession."""

from __future__ import annotations

import asyncio

import pytest
from mcp.shared.exceptions import MCPError

from tests.unit.mcp_mem import MemLink, make_host, raw_session, run, session_of
from vsmd.mcp import wire
from vsmd.mcp.host import Limits
from vsmd.mcp.registry import FULL, NONE, READ, Caller


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

    run(main())


def test_a_forgotten_session_is_opened_again_and_the_call_goes_through() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        link = MemLink(host, Caller("vsmctl", "", FULL))
        async with raw_session(link) as (dispatcher, s):
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
