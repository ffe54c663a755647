"""What the daemon hands a VSM process so it can start, and the exit codes it answers with.

Both sides import this module: the daemon builds specs and reads exit codes, the VSM runtime
reads specs and exits with the codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vsmd.protocol import CAPABILITIES

# Exit codes a VSM uses, so the daemon can say why a start failed.
# The largest message on the socket between the daemon and its fork server (a spec with the
# state it starts with, or a report): here, so that the daemon needs nothing of the fork server.
MAX_PACKET = 1 << 20
EXIT_OK = 0
EXIT_BROKER = 3
EXIT_AGENT = 4
EXIT_SPEC = 5

EXIT_REASONS = {
    EXIT_BROKER: "the VSM could not reach the broker",
    EXIT_AGENT: "the VSM's agent failed",
    EXIT_SPEC: "the VSM was given a bad spec",
}


@dataclass(frozen=True)
class VsmSpec:
    vsm_id: str
    name: str
    path: str
    parent_id: str | None
    depth: int
    agent: str
    broker_url: str
    namespace: str
    config: dict[str, Any] = field(default_factory=dict)
    heartbeat: int = 30
    max_message_bytes: int = 65536
    tick_interval: float = 1.0
    reconnect_max_backoff: float = 5.0
    agent_modules: tuple[str, ...] = ()
    policy: dict[str, Any] = field(default_factory=dict)
    # Ids of its ancestors, the root first: the VSM binds its inbox to their broadcasts.
    ancestors: tuple[str, ...] = ()
    # Its state as the daemon last had it (own entries, ancestors' policy), so a VSM starts
    # with it without asking; ``sync``: ask anyway (its children's states, or a state too big
    # for the spec).
    state: dict[str, Any] = field(default_factory=dict)
    sync: bool = False
    # The cgroup.procs files the child joins before agent code runs (empty: no cgroups).
    cgroup_procs: tuple[str, ...] = ()
    # Secure mode: where the VSM gets its broker token (broker_url then carries no
    # credentials), and the uid it drops to before agent code (0: stays as it is).
    token_socket: str = ""
    uid: int = 0
    mcp: bool = True  # serve MCP (config mcp_server)
    event_loop: str = "uvloop"  # config event_loop
    # What its agent was granted (vsmd.protocol.CAPABILITIES); the context refuses the rest.
    capabilities: tuple[str, ...] = CAPABILITIES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VsmSpec:
        data = dict(data)
        data["agent_modules"] = tuple(data.get("agent_modules", ()))
        data["ancestors"] = tuple(data.get("ancestors", ()))
        data["cgroup_procs"] = tuple(data.get("cgroup_procs", ()))
        data["capabilities"] = tuple(data.get("capabilities", CAPABILITIES))
        return cls(**data)
