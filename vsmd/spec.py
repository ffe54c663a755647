"""What the daemon hands a VSM process so it can start: identity, agent and bus settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VsmSpec:
        data = dict(data)
        data["agent_modules"] = tuple(data.get("agent_modules", ()))
        return cls(**data)
