"""An agent type of one's own, installed as a package (docs/agents.md)."""

from typing import Any, ClassVar

from vsmd.agents import AgentContext, AsyncAgent, Sender
from vsmd.mcp.registry import Caller


class Greeter(AsyncAgent):
    """Greets whoever asks, in the language of its settings."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"language": {"enum": ["en", "fr"]}},
        "required": ["language"],
        "additionalProperties": False,
    }
    capabilities: ClassVar[frozenset[str]] = frozenset({"state", "metrics", "mcp"})

    def greet(self, who: str) -> str:
        return ("Hello, " if self.config["language"] == "en" else "Bonjour, ") + who

    async def start(self, ctx: AgentContext) -> None:
        async def greet(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
            ctx.state.count("greetings")
            return {"greeting": self.greet(str(args.get("who", caller.id)))}

        ctx.mcp.tool("greet", greet, "Greet someone.", read_only=True)

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        ctx.state.count("greetings")
        return {"greeting": self.greet(str(body.get("who", sender.id)))}


def card(args: dict[str, Any]) -> dict[str, Any]:
    """A task for worker VSMs: a greeting card for ``who``."""
    return {"card": f"Dear {args['who']}, best wishes."}
