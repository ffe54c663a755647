"""One throwaway run of a VSM's start-up path in the fork server, before it forks VSMs.

A forked VSM's memory is mostly parent pages it writes to on first use (objects built lazily on
first connect, code specialised as it runs). Running the path once in the fork server, then
freezing the collector, builds that state where every VSM shares it instead of copying it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from typing import Any

from mcp.server.lowlevel import Server

from vsmd.agents import AgentRegistry
from vsmd.mcp.host import Session
from vsmd.protocol import CAPABILITIES, Envelope
from vsmd.spec import VsmSpec
from vsmd.vsm import loop as vsm_loop
from vsmd.vsm.runtime import VsmRuntime
from vsmd.vsm.state import StateReplica

log = logging.getLogger("vsmd.forkserver")
# With the MCP cycle, eight runs of the path: CPython 3.11 specialises a function's bytecode on
# its eighth call, and until then every call writes a counter into the code object, which a
# VSM would copy for each function its start runs.
CYCLES = 7


async def _nowhere(_delta: dict[str, Any]) -> None:
    return None


async def _nothing() -> None:
    return None


async def _cycle(runtime: VsmRuntime, mcp: bool) -> None:
    spec = runtime.spec
    # A first message as a start has its ready report, so that the start's own path is the
    # one run here: a probe to itself, which the runtime ignores.
    probe = Envelope(type="probe", sender=spec.vsm_id, path=spec.path).encode()
    await runtime.bus.open(first=(runtime.topo.id_key(spec.vsm_id), probe))
    try:
        # A request to itself: publish with confirm, the reply consumer, the inbox handler,
        # the reply; then a state write and its encoding.
        ping = Envelope(type="ping", sender=spec.vsm_id, path=spec.path).encode()
        await runtime.call(runtime.topo.id_key(spec.vsm_id), ping, 5.0)
        # State writes and their encoding, sent nowhere: the daemon does not know this VSM.
        replica = StateReplica(spec, _nowhere, _nothing)
        replica.set("warm", {"path": spec.path})
        replica.count("warm")
        await replica.flush()
        # An MCP session with itself: the SDK's session, dispatch and pydantic paths.
        if not mcp:
            return
        runtime.serve_mcp()
        runtime._started = asyncio.Event()
        runtime._started.set()
        async with runtime.ctx.mcp_client(spec.vsm_id, timeout=5.0) as session:
            await session.list_tools()
            await session.call_tool("status", {})
            await session.read_resource(f"vsm://{spec.vsm_id}/state")
        if runtime.mcp_host is not None:
            await runtime.mcp_host.close()
    finally:
        await runtime.bus.close()


def prewarm(template: VsmSpec, registry: AgentRegistry, mcp_server: Server[Session]) -> None:
    """Run the cycle with a throwaway identity on the broker of ``template``; never raises.

    Not in secure mode: the cycle would need a broker token in the fork server, whose memory
    every VSM inherits (docs/security.md); VSMs there start without the warm-up.
    """
    if template.token_socket:
        return
    name = f"prewarm-{secrets.token_hex(4)}"
    spec = dataclasses.replace(
        template,
        vsm_id=secrets.token_hex(6),
        name=name,
        path=name,
        parent_id=None,
        depth=1,
        agent="noop",
        ancestors=(),
        config={},
        # Every path the cycle runs, whatever the first VSM asked for was granted.
        capabilities=CAPABILITIES,
    )
    try:
        # The MCP session first, once: the plain cycles after it fill the holes its garbage
        # left in the allocator's pools, which a VSM would otherwise fill (copying each page).
        for i in range(CYCLES + 1):
            mcp = i == 0 and spec.mcp
            runtime = VsmRuntime(spec, registry, mcp_server)
            vsm_loop.run(asyncio.wait_for(_cycle(runtime, mcp), 5.0), spec.event_loop)
    except Exception as exc:  # best effort: whatever happens, the fork server goes on forking
        log.warning("prewarm skipped: %s", exc)
