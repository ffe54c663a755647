"""Agents that write to stdout and stderr, for the tests of the daemon's log.

Loaded by the daemon and fork server via ``agent_modules = ["tests.support.log_agents"]``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from vsmd.agents import AgentRegistry, BaseAgent, Sender, SyncContext


class ChattyAgent(BaseAgent):
    """Writes ``say`` to stderr and stdout at start, and whatever ``handle("say")`` is given;
    a line of ``long`` bytes; and a line from a helper process it starts."""

    def start(self, ctx: SyncContext) -> None:
        said = self.config.get("say", "hello")
        print(f"{said} on stderr", file=sys.stderr)
        print(f"{said} on stdout")  # no flush: the pipe must not hold it back
        if self.config.get("long"):
            print("x" * int(self.config["long"]), file=sys.stderr)
        if self.config.get("helper"):
            subprocess.run(["sh", "-c", f"echo '{said} from a helper' >&2"], check=True)

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        print(body.get("text", ""), file=sys.stderr)
        return {}


def register_agents(registry: AgentRegistry) -> None:
    registry.register("chatty", ChattyAgent)
