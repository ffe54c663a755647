"""What vsmctl does over MCP (``mcp``, ``tools``, ``call``, ``resources``); only these import
the SDK, so ``list``, ``spawn`` and ``terminate`` start without it."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.session import ClientSession
from mcp.server.stdio import stdio_server
from mcp.shared.dispatcher import CallOptions, DispatchContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from vsmd.errors import Unauthorized, VsmdError
from vsmd.mcp import wire
from vsmd.mcp.client import create_mcp_client, target_key
from vsmd.mcp.link import StandaloneLink
from vsmd.mcp.transport import ClientDispatcher

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


class Relay:
    """Carries one MCP host's messages to a VSM and back, each request under the host's own
    id, so the host's cancellations and the VSM's answers need no translation."""

    def __init__(
        self, vsm: ClientDispatcher, to_host: MemoryObjectSendStream[SessionMessage]
    ) -> None:
        self.vsm = vsm
        self.to_host = to_host
        self._calls: dict[Any, asyncio.Task[None]] = {}  # the host's requests out, by id
        self._asked: dict[str, asyncio.Future[dict[str, Any]]] = {}  # the VSM's, to the host
        self._ids = itertools.count(1)

    async def from_host(self, m: types.JSONRPCMessage) -> None:
        if isinstance(m, types.JSONRPCRequest):
            self._calls[m.id] = asyncio.get_running_loop().create_task(self._call(m))
        elif isinstance(m, types.JSONRPCNotification):
            if m.method == "notifications/cancelled":
                call = self._calls.get((m.params or {}).get("requestId"))
                if call is not None:  # the VSM will not answer it: stop waiting
                    call.cancel()
            await self.vsm.notify(m.method, m.params)
        else:
            fut = self._asked.pop(str(m.id), None)
            if fut is not None and not fut.done():
                if isinstance(m, types.JSONRPCError):
                    fut.set_exception(MCPError.from_error_data(m.error))
                else:
                    fut.set_result(m.result)

    async def _call(self, m: types.JSONRPCRequest) -> None:
        opts: CallOptions = {"request_id": m.id, "cancel_on_abandon": False}
        try:
            result = await self.vsm.send_raw_request(m.method, m.params, opts)
            out: types.JSONRPCMessage = types.JSONRPCResponse(jsonrpc="2.0", id=m.id, result=result)
        except MCPError as err:
            out = types.JSONRPCError(jsonrpc="2.0", id=m.id, error=err.error)
        finally:
            self._calls.pop(m.id, None)
        await self.to_host.send(SessionMessage(out))

    async def asked(
        self, dctx: DispatchContext[Any], method: str, params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """A request of the VSM's: the host answers it."""
        rid = f"vsm-{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked[rid] = fut
        try:
            request = types.JSONRPCRequest(
                jsonrpc="2.0", id=rid, method=method, params=dict(params or {}) or None
            )
            await self.to_host.send(SessionMessage(request))
            return await fut
        finally:
            self._asked.pop(rid, None)

    async def told(
        self, dctx: DispatchContext[Any], method: str, params: Mapping[str, Any] | None
    ) -> None:
        note = types.JSONRPCNotification(
            jsonrpc="2.0", method=method, params=dict(params) if params is not None else None
        )
        await self.to_host.send(SessionMessage(note))


def bridge(url: str, namespace: str, target: str, timeout: float) -> int:
    """stdio <-> the VSM's inbox, one JSON-RPC message per line each way, until stdin ends.

    The MCP host on the other side of stdio runs the session (initialize and all); this only
    carries its messages, and answers a line that is no JSON-RPC with a parse error.
    """

    async def main() -> None:
        link = StandaloneLink(url, namespace)
        key, label = target_key(link.topo, target)
        try:
            async with (
                stdio_server() as (stdin_read, stdout_write),
                ClientDispatcher(link, key, label, SENDER) as vsm,
            ):
                relay = Relay(vsm, stdout_write)
                async with anyio.create_task_group() as tg:
                    await tg.start(vsm.run, relay.asked, relay.told)
                    async for item in stdin_read:
                        if isinstance(item, Exception):
                            text = f"not a JSON-RPC message: {str(item)[:200]}"
                            await stdout_write.send(wire.error(None, types.PARSE_ERROR, text))
                        else:
                            await relay.from_host(item.message)
                    # The host closed stdin: we are done once what it asked is answered.
                    await vsm.settle(timeout)
                    tg.cancel_scope.cancel()
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
