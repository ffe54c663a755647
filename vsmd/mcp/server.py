"""The SDK's low-level server over a :class:`McpRegistry`, with the caller's authority checked.

Authority: a tool call needs the ``full`` role unless the tool is read-only, which ``read``
(viewers) may call too; resources and prompts are readable by both. A refusal is a JSON-RPC
error (code UNAUTHORIZED) that names the caller, the tool and the VSM. A tool that fails
answers with ``isError`` and the vsmd error code, as MCP asks of tool errors.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from vsmd import __version__
from vsmd.errors import VsmdError
from vsmd.mcp import wire
from vsmd.mcp.host import Session
from vsmd.mcp.registry import FULL, READ, McpRegistry, invoke
from vsmd.protocol import dumps

log = logging.getLogger("vsmd.mcp")
Ctx = ServerRequestContext[Session, Any]
Page = types.PaginatedRequestParams | None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value).decode()


def _refuse(session: Session, what: str) -> MCPError:
    why = "viewers may only read" if session.caller.role == READ else "it has no authority here"
    return MCPError(
        wire.UNAUTHORIZED,
        f"{session.caller.describe()} may not {what} on {session.host.path}: {why}",
    )


def _may_read(session: Session, what: str) -> None:
    if session.caller.role not in (FULL, READ):
        raise _refuse(session, what)


def _tool_error(text: str, err: VsmdError | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"error": err.to_dict()} if err is not None else None,
        is_error=True,
    )


def _reg(ctx: Ctx) -> McpRegistry:
    return ctx.lifespan_context.host.registry


class Handlers:
    """Stateless: each call finds its VSM's registry through its session, so one server,
    built in the fork server before it forks, serves every VSM from shared pages."""

    async def list_tools(self, ctx: Ctx, params: Page) -> types.ListToolsResult:
        hint = types.ToolAnnotations
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=t.name,
                    description=t.description,
                    input_schema=t.input_schema,
                    annotations=hint(read_only_hint=t.read_only),
                )
                for t in _reg(ctx).tools.values()
            ]
        )

    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        session = ctx.lifespan_context
        tool = _reg(ctx).tools.get(params.name)
        if tool is None:
            raise MCPError(
                types.INVALID_PARAMS, f"no tool {params.name[:64]!r} on {session.host.path}"
            )
        role = session.caller.role
        if not (role == FULL or (role == READ and tool.read_only)):
            raise _refuse(session, f"call {tool.name}")
        try:
            result = await invoke(tool.handler, dict(params.arguments or {}), session.caller)
        except VsmdError as err:
            return _tool_error(f"{err.code}: {err.message}", err)
        except Exception as exc:
            log.exception("vsm %s: tool %s failed", session.host.vsm_id, tool.name)
            return _tool_error(f"{type(exc).__name__}: {exc}")
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=_text(result))],
            structured_content=result if isinstance(result, dict) else {"result": result},
        )

    async def list_resources(self, ctx: Ctx, params: Page) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=r.uri, name=r.name, description=r.description, mime_type=r.mime_type
                )
                for r in _reg(ctx).resources.values()
            ]
        )

    def _resource(self, ctx: Ctx, uri: str) -> None:
        _may_read(ctx.lifespan_context, f"read {uri}")
        if uri not in _reg(ctx).resources:
            path = ctx.lifespan_context.host.path
            raise MCPError(types.INVALID_PARAMS, f"no resource {uri[:200]!r} on {path}")

    async def read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        self._resource(ctx, uri)
        res = _reg(ctx).resources[uri]
        try:
            value = await invoke(res.handler, ctx.lifespan_context.caller)
        except VsmdError as err:
            raise MCPError(types.INTERNAL_ERROR, f"{err.code}: {err.message}") from None
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=uri, text=_text(value), mime_type=res.mime_type)
            ]
        )

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        self._resource(ctx, uri)
        ctx.lifespan_context.subscriptions.add(uri)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: Ctx, params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        ctx.lifespan_context.subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    async def list_prompts(self, ctx: Ctx, params: Page) -> types.ListPromptsResult:
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name=p.name,
                    description=p.description,
                    arguments=[types.PromptArgument(**a) for a in p.arguments],
                )
                for p in _reg(ctx).prompts.values()
            ]
        )

    async def get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        prompt = _reg(ctx).prompts.get(params.name)
        if prompt is None:
            raise MCPError(types.INVALID_PARAMS, f"no prompt {params.name[:64]!r}")
        session = ctx.lifespan_context
        _may_read(session, f"get prompt {prompt.name}")
        text = await invoke(prompt.handler, dict(params.arguments or {}), session.caller)
        content = types.TextContent(type="text", text=_text(text))
        return types.GetPromptResult(
            description=prompt.description,
            messages=[types.PromptMessage(role="user", content=content)],
        )


def build_server(name: str = "vsm") -> Server[Session]:
    """The server every VSM of a fork server shares; its name is what ``initialize`` says."""
    h = Handlers()
    server: Server[Session] = Server(
        name,
        version=__version__,
        on_list_tools=h.list_tools,
        on_call_tool=h.call_tool,
        on_list_resources=h.list_resources,
        on_read_resource=h.read_resource,
        on_subscribe_resource=h.subscribe,
        on_unsubscribe_resource=h.unsubscribe,
        on_list_prompts=h.list_prompts,
        on_get_prompt=h.get_prompt,
    )
    # The SDK's tracing middleware is a no-op without an exporter; it still costs every call.
    server.middleware = []
    return server
