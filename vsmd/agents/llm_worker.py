"""llm_worker: a language model whose tools are its VSM's MCP tools, so it can spawn child
llm_workers, hand them sub-tasks, wait for their answers and combine them.

Limits: ``max_turns`` model calls per task (a model that keeps calling tools gets an error
result, not a loop); only the tools in ``tools`` (default: all but ``complete``, which would be
itself again); delegation depth through the daemon's ``max_depth_below`` policy; tokens
through the policy ``x-llm-token-budget`` (what this VSM may use in all, each VSM counting its
own), checked before every model call.
"""

from __future__ import annotations

import collections
import re
from typing import Any, ClassVar

import orjson

from vsmd.agents import AgentContext, AsyncAgent, Sender
from vsmd.agents.llm_client import ChatClient, LlmSettings
from vsmd.errors import AgentError, ProtocolError, QuotaExceeded
from vsmd.mcp.registry import Caller

_ID = re.compile(r"[0-9a-f]{12}")
OWN_TOOLS = ("complete", "spawn_worker", "delegate")
BUDGET_KEY = "x-llm-token-budget"
USED_KEY = "llm_tokens_used"
DELEGATE_TIMEOUT = 300.0


def _text(result: Any) -> str:
    """What a tool's MCP result says, as the tool message the model reads."""
    texts = [getattr(c, "text", "") for c in getattr(result, "content", [])]
    body = " ".join(t for t in texts if t)
    return f"error: {body}" if getattr(result, "is_error", False) else body


class LlmWorkerAgent(AsyncAgent):
    """A client of an OpenAI-compatible chat model whose tools are its VSM's MCP tools."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "base_url": {"type": "string", "pattern": "^https?://"},
            "model": {"type": "string", "minLength": 1},
            "api_key_env": {"type": "string", "minLength": 1},
            "api_key_file": {"type": "string", "minLength": 1},
            "system": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
            "retries": {"type": "integer", "minimum": 0, "maximum": 10},
            "backoff": {"type": "number", "minimum": 0, "maximum": 60},
            "max_turns": {"type": "integer", "minimum": 1, "maximum": 100},
            "memory": {"type": "integer", "minimum": 0, "maximum": 1000},
            "tools": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["base_url", "model"],
        "additionalProperties": False,
    }
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"llm", "mcp", "spawn", "messaging", "state", "metrics"}
    )

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.client = ChatClient(LlmSettings.from_config(config))
        self.max_turns = int(config.get("max_turns", 8))
        # The conversation so far (user and assistant turns), shortest first to go.
        self.memory: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=int(config.get("memory", 20))
        )
        allowed = config.get("tools")
        self.allowed: frozenset[str] | None = None if allowed is None else frozenset(allowed)

    async def start(self, ctx: AgentContext) -> None:
        async def complete(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            return await self.complete(ctx, _prompt(args))

        async def spawn_worker(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            name = args.get("name")
            if not isinstance(name, str) or not name:
                raise ProtocolError("spawn_worker: 'name' must be a non-empty string")
            config = {k: v for k, v in self.config.items() if k not in ("system", "tools")}
            if isinstance(args.get("system"), str):
                config["system"] = args["system"]
            info = await ctx.spawn_child(name, "llm_worker", config)
            return {"id": info["id"], "path": info["path"]}

        async def delegate(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            child = args.get("child")
            if not isinstance(child, str) or not child:
                raise ProtocolError("delegate: 'child' must be a child's name, path or id")
            target = child if _ID.fullmatch(child) or "." in child else f"{ctx.path}.{child}"
            async with ctx.mcp_client(target, timeout=DELEGATE_TIMEOUT) as s:
                result = await s.call_tool("complete", {"prompt": _prompt(args)})
            if result.is_error:
                raise AgentError(f"{target} failed: {_text(result)}")
            answer = (result.structured_content or {}).get("answer", "")
            return {"child": target, "answer": answer}

        prompt_schema = {"type": "string", "minLength": 1}
        ctx.mcp.tool(
            "complete",
            complete,
            "Ask this VSM's model; it may use this VSM's tools. Returns its answer.",
            {"type": "object", "properties": {"prompt": prompt_schema}, "required": ["prompt"]},
        )
        ctx.mcp.tool(
            "spawn_worker",
            spawn_worker,
            "Spawn a child llm_worker with this one's model settings (and its own system prompt).",
            {
                "type": "object",
                "properties": {"name": {"type": "string"}, "system": {"type": "string"}},
                "required": ["name"],
            },
        )
        ctx.mcp.tool(
            "delegate",
            delegate,
            "Hand a sub-task to a child llm_worker (by name) and wait for its answer.",
            {
                "type": "object",
                "properties": {"child": {"type": "string"}, "prompt": prompt_schema},
                "required": ["child", "prompt"],
            },
        )

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "complete":
            return await self.complete(ctx, _prompt(body))
        raise ProtocolError(f"llm_worker: unknown kind {kind!r}; it answers 'complete'")

    async def stop(self, ctx: AgentContext) -> None:
        await self.client.close()

    # --- the loop ----------------------------------------------------------------------------

    async def complete(self, ctx: AgentContext, prompt: str) -> dict[str, Any]:
        system = self.config.get("system")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages += [*self.memory, {"role": "user", "content": prompt}]
        async with ctx.mcp_client(ctx.vsm_id, timeout=DELEGATE_TIMEOUT) as me:
            listed = (await me.list_tools()).tools
            tools = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description or "",
                        "parameters": t.input_schema,
                    },
                }
                for t in listed
                if t.name != "complete" and (self.allowed is None or t.name in self.allowed)
            ]
            for turn in range(1, self.max_turns + 1):
                self._check_budget(ctx)
                reply = await self.client.chat(messages, tools)
                self._count(ctx, reply["usage"])
                message = reply["message"]
                messages.append(message)
                calls = message.get("tool_calls") or []
                if not calls:
                    answer = str(message.get("content") or "")
                    self.memory.extend(
                        [
                            {"role": "user", "content": prompt},
                            {"role": "assistant", "content": answer},
                        ]
                    )
                    return {"answer": answer, "turns": turn}
                for call in calls:
                    messages.append(await self._tool_message(me, call, tools))
        ctx.state.count("llm_gave_up")
        raise AgentError(f"the model gave no answer within {self.max_turns} turns")

    async def _tool_message(
        self, me: Any, call: Any, tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one tool call of the model; whatever goes wrong is told to the model."""
        call_id = call.get("id", "") if isinstance(call, dict) else ""
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        offered = {t["function"]["name"] for t in tools}
        if not isinstance(name, str) or name not in offered:
            content = f"error: tool {name!r} is not one this VSM offers you"
        else:
            try:
                raw = fn.get("arguments") or "{}" if isinstance(fn, dict) else "{}"
                args = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
                if not isinstance(args, dict):
                    raise ValueError("arguments are no JSON object")
                content = _text(await me.call_tool(name, args))
            except (ValueError, orjson.JSONDecodeError) as exc:
                content = f"error: bad arguments for {name}: {exc}"
            except Exception as exc:  # an MCP error of the call: the model hears it
                content = f"error: {name} failed: {getattr(exc, 'message', exc)}"
        return {"role": "tool", "tool_call_id": call_id, "content": content}

    def _count(self, ctx: AgentContext, usage: dict[str, Any]) -> None:
        ctx.state.count("llm_calls")
        used = 0
        for key in ("prompt_tokens", "completion_tokens"):
            n = usage.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                ctx.state.count(f"llm_{key}", n)  # summed up the tree by the subtree summary
                used += n
        if used:
            # In data too, which a restarted VSM gets back: a crash is no way to a new budget.
            ctx.state.set(USED_KEY, int(ctx.state.get(USED_KEY, 0)) + used)

    def _check_budget(self, ctx: AgentContext) -> None:
        budget = ctx.state.policy.get(BUDGET_KEY)
        if not isinstance(budget, int | float) or isinstance(budget, bool):
            return
        used = int(ctx.state.get(USED_KEY, 0))
        if used >= budget:
            raise QuotaExceeded(f"token budget {budget:g} ({BUDGET_KEY}) is used up: {used} tokens")


def _prompt(args: dict[str, Any]) -> str:
    prompt = args.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ProtocolError("'prompt' must be a non-empty string")
    return prompt
