"""What a VSM offers over MCP: tools, resources and prompts, registered by name.

The runtime registers the tools every VSM has; an agent adds its own through ``ctx.mcp`` (the
same calls), so one registration API serves both. A handler gets the arguments and the caller
(a :class:`Caller`) and returns anything JSON can carry; async handlers run on the VSM's loop,
plain ones in a worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vsmd.errors import ConfigError, Unauthorized

FULL, READ, NONE = "full", "read", "none"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class Caller:
    """Who holds an MCP session with this VSM, and what it may do here.

    ``role`` is ``full`` for the VSM itself, its ancestors, the daemon and operators; ``read``
    for viewers (read-only tools and resources); ``none`` for anyone else.
    """

    id: str
    path: str
    role: str
    user: str | None = None

    def describe(self) -> str:
        who = f"VSM {self.path or self.id}" if self.path else self.id
        return f"{who} ({self.user})" if self.user else who


Handler = Callable[[dict[str, Any], Caller], Any]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    handler: Handler
    read_only: bool = False


@dataclass(frozen=True)
class Resource:
    uri: str
    name: str
    description: str
    handler: Callable[[Caller], Any]
    mime_type: str = "application/json"


@dataclass(frozen=True)
class Prompt:
    name: str
    description: str
    arguments: list[dict[str, Any]]
    handler: Callable[[dict[str, str], Caller], Any]


@dataclass
class McpRegistry:
    """``ctx.mcp``: add what this VSM's MCP server lists, before or after it starts serving."""

    tools: dict[str, Tool] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    prompts: dict[str, Prompt] = field(default_factory=dict)

    def tool(
        self,
        name: str,
        handler: Handler,
        description: str = "",
        input_schema: dict[str, Any] | None = None,
        read_only: bool = False,
    ) -> None:
        """A tool; ``read_only`` tools are open to viewers too."""
        _check_name("tool", name)
        schema = input_schema if input_schema is not None else EMPTY_SCHEMA
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise ConfigError(f"tool {name!r}: input_schema must be a JSON schema of an object")
        self.tools[name] = Tool(name, description, schema, handler, read_only)

    def resource(
        self,
        uri: str,
        handler: Callable[[Caller], Any],
        name: str | None = None,
        description: str = "",
        mime_type: str = "application/json",
    ) -> None:
        if not isinstance(uri, str) or "://" not in uri or len(uri) > 500:
            raise ConfigError(f"resource {str(uri)[:80]!r}: a URI such as vsm://<id>/name")
        self.resources[uri] = Resource(
            uri, name or uri.rsplit("/", 1)[-1], description, handler, mime_type
        )

    def prompt(
        self,
        name: str,
        handler: Callable[[dict[str, str], Caller], Any],
        description: str = "",
        arguments: list[dict[str, Any]] | None = None,
    ) -> None:
        _check_name("prompt", name)
        self.prompts[name] = Prompt(name, description, arguments or [], handler)


class McpGrant:
    """``ctx.mcp`` as an agent sees it: the VSM's registry, if its spawn granted ``mcp``."""

    def __init__(self, registry: McpRegistry, granted: bool, path: str) -> None:
        self._registry = registry
        self._granted = granted
        self._path = path

    @property
    def registry(self) -> McpRegistry:
        self._need()
        return self._registry

    def _need(self) -> None:
        if not self._granted:
            raise Unauthorized(f"VSM {self._path} was not granted the mcp capability")

    def tool(
        self,
        name: str,
        handler: Handler,
        description: str = "",
        input_schema: dict[str, Any] | None = None,
        read_only: bool = False,
    ) -> None:
        self.registry.tool(name, handler, description, input_schema, read_only)

    def resource(
        self,
        uri: str,
        handler: Callable[[Caller], Any],
        name: str | None = None,
        description: str = "",
        mime_type: str = "application/json",
    ) -> None:
        self.registry.resource(uri, handler, name, description, mime_type)

    def prompt(
        self,
        name: str,
        handler: Callable[[dict[str, str], Caller], Any],
        description: str = "",
        arguments: list[dict[str, Any]] | None = None,
    ) -> None:
        self.registry.prompt(name, handler, description, arguments)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{what} name {str(name)[:80]!r}: 1-64 letters, digits, '_', '.', '-'")


async def invoke(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a handler: on the loop when it is async, else in a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if isinstance(result, Awaitable):
        return await result
    return result
