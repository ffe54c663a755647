"""What vsmctl does over MCP (``mcp``, ``tools``, ``call``, ``resources``); only these import
the SDK, so ``list``, ``spawn`` and ``terminate`` start without it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from vsmd.errors import Unauthorized, VsmdError
from vsmd.mcp import wire
from vsmd.mcp.client import create_mcp_client, target_key
from vsmd.mcp.link import StandaloneLink
from vsmd.mcp.transport import ClientTransport

T = TypeVar("T")
SENDER = "vsmctl"


def run_session(
    url: str,
    namespace: str,
    target: str,
    timeout: float,
    fn: Callable[[ClientSession], Awaitable[T]],
) -> T:
    """One MCP session with ``target`` for ``fn``; JSON-RPC errors become VsmdErrors."""

    async def main() -> T:
        async with create_mcp_client(url, namespace, target, SENDER, timeout) as session:
            return await fn(session)

    try:
        return asyncio.run(main())
    except MCPError as err:
        raise as_vsmd_error(err) from None
    except ExceptionGroup as group:  # anyio task groups wrap what the session raised
        first = group.exceptions[0]
        if isinstance(first, MCPError):
            raise as_vsmd_error(first) from None
        if isinstance(first, VsmdError):
            raise first from None
        raise


def as_vsmd_error(err: MCPError) -> VsmdError:
    if err.code == wire.UNAUTHORIZED:
        return Unauthorized(err.message)
    out = VsmdError(err.message)
    out.code = {
        wire.UNREACHABLE: "UNREACHABLE",
        wire.BROKER_LOST: "BROKER_UNAVAILABLE",
        wire.BUSY: "THROTTLED",
        types.INVALID_PARAMS: "BAD_REQUEST",
        types.REQUEST_TIMEOUT: "TIMEOUT",
    }.get(err.code, "MCP_ERROR")
    return out


async def list_tools(session: ClientSession) -> list[dict[str, Any]]:
    result = await session.list_tools()
    return [
        {
            "name": t.name,
            "description": t.description or "",
            "read_only": bool(t.annotations and t.annotations.read_only_hint),
            "input_schema": t.input_schema,
        }
        for t in result.tools
    ]


def call_tool(
    name: str, args: dict[str, Any]
) -> Callable[[ClientSession], Awaitable[types.CallToolResult]]:
    async def run(session: ClientSession) -> types.CallToolResult:
        return await session.call_tool(name, args)

    return run


async def list_resources(session: ClientSession) -> list[dict[str, Any]]:
    result = await session.list_resources()
    return [
        {
            "uri": str(r.uri),
            "name": r.name,
            "description": r.description or "",
            "mime_type": r.mime_type,
        }
        for r in result.resources
    ]


def read_resource(uri: str) -> Callable[[ClientSession], Awaitable[list[str]]]:
    async def run(session: ClientSession) -> list[str]:
        result = await session.read_resource(uri)
        return [c.text for c in result.contents if isinstance(c, types.TextResourceContents)]

    return run


def bridge(url: str, namespace: str, target: str, timeout: float) -> int:
    """stdio <-> the VSM's inbox, one JSON-RPC message per line each way, until stdin ends.

    The MCP host on the other side of stdio runs the session (initialize and all); this only
    carries its messages, and answers a line that is no JSON-RPC with a parse error.
    """

    async def main() -> None:
        link = StandaloneLink(url, namespace)
        key, label = target_key(link.topo, target)
        transport = ClientTransport(link, key, label, SENDER)
        try:
            async with (
                stdio_server() as (stdin_read, stdout_write),
                transport as (vsm_read, vsm_write),
            ):

                async def to_vsm() -> None:
                    async for item in stdin_read:
                        if isinstance(item, Exception):
                            text = f"not a JSON-RPC message: {str(item)[:200]}"
                            await stdout_write.send(wire.error(None, types.PARSE_ERROR, text))
                        else:
                            await vsm_write.send(item)
                    # The host closed stdin: we are done once what it asked is answered.
                    await transport.settle(timeout)
                    tg.cancel_scope.cancel()

                async def to_host() -> None:
                    async for item in vsm_read:
                        if isinstance(item, SessionMessage):
                            await stdout_write.send(item)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(to_vsm)
                    tg.start_soon(to_host)
                await stdout_write.aclose()  # else stdio_server waits for more to write
        finally:
            await link.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except VsmdError as err:
        print(f"vsmctl: {err.code}: {err.message}", file=sys.stderr)
        return 1
    return 0
