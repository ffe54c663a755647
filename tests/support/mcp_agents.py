"""Agents for the MCP tests: one that drives MCP sessions from inside its VSM and adds tools,
resources and a prompt of its own through ``ctx.mcp``."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.shared.exceptions import MCPError

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, BaseAgent, Sender, SyncContext
from vsmd.mcp.registry import Caller


class McpDriverAgent(AsyncAgent):
    """``recurse``: spawn a child, ask it over MCP to spawn a grandchild, list its children.
    ``mcp_to``: one tool call over MCP to any target, its result or the JSON-RPC error."""

    async def start(self, ctx: AgentContext) -> None:
        async def slow(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            ctx.state.set("slow_started", caller.id)
            try:
                await asyncio.sleep(float(args.get("seconds", 1.0)))
            except asyncio.CancelledError:  # the caller gave up and told us so
                ctx.state.set("slow_cancelled", caller.id)
                raise
            return {"slept": args.get("seconds")}

        async def echo(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            return {"echo": args, "caller": caller.id, "role": caller.role}

        async def note(caller: Caller) -> str:
            return f"note of {ctx.path}"

        async def greet(args: dict[str, str], caller: Caller) -> str:
            return f"Hello {args.get('who', 'you')} from {ctx.path}"

        ctx.mcp.tool("slow", slow, "Sleep for 'seconds', then answer.")
        ctx.mcp.tool("echo", echo, "Answer with the arguments.", read_only=True)
        ctx.mcp.resource(f"vsm://{ctx.vsm_id}/note", note, mime_type="text/plain")
        ctx.mcp.prompt("greet", greet, "A greeting.", [{"name": "who", "required": False}])

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> Any:
        if kind == "recurse":
            child = await ctx.spawn_child(body.get("name", "c"), "mcpdrive")
            async with ctx.mcp_client(child["id"]) as s:
                grand = await s.call_tool("spawn_child", {"name": "g", "agent": "mcpdrive"})
                kids = await s.call_tool("list_children", {})
            assert grand.structured_content is not None and kids.structured_content is not None
            return {
                "child": child["id"],
                "grandchild": grand.structured_content["id"],
                "kids": [k["path"] for k in kids.structured_content["children"]],
            }
        if kind == "mcp_to":
            try:
                async with ctx.mcp_client(str(body["target"]), timeout=20.0) as s:
                    res = await s.call_tool(str(body["tool"]), body.get("args") or {})
                    return {"result": res.structured_content, "is_error": res.is_error}
            except MCPError as err:
                return {"error": {"code": err.code, "message": err.message}}
        return None


class PlainToolAgent(BaseAgent):
    """A plain (threaded) agent adds a tool with a plain function: it runs in a worker thread."""

    def start(self, ctx: SyncContext) -> None:
        def add(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            return {"sum": sum(int(v) for v in args.values())}

        ctx.mcp.tool("add", add, "Add the arguments' values.")


def register_agents(registry: AgentRegistry) -> None:
    registry.register("mcpdrive", McpDriverAgent)
    registry.register("mcpplain", PlainToolAgent)
