"""Agents the tests register through the same registry the AgentFactory uses.

Loaded by the daemon and fork server via ``agent_modules = ["tests.support.agents"]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from vsmd.agents import AgentRegistry, BaseAgent, Sender, SyncContext
from vsmd.errors import VsmdError


class SpawnerAgent(BaseAgent):
    """Asks the daemon, over the bus, for the children named in ``children``."""

    def start(self, ctx: SyncContext) -> None:
        for name in self.config.get("children", []):
            try:
                ctx.spawn_child(
                    name=name,
                    agent=self.config.get("child_agent"),
                    config=self.config.get("child_config") or {},
                    policy=self.config.get("child_policy"),
                )
            except VsmdError as err:
                print(f"spawner {ctx.path}: {err.code} {err.message}", file=sys.stderr)


class BomberAgent(BaseAgent):
    """Asks for children in a tight loop, as a runaway agent would; counts refusals."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.spawned = 0
        self.refused: dict[str, int] = {}

    def tick(self, ctx: SyncContext) -> None:
        deadline = time.monotonic() + float(self.config.get("burst_seconds", 0.5))
        while time.monotonic() < deadline:
            try:
                ctx.spawn_child()
                self.spawned += 1
            except VsmdError as err:
                self.refused[err.code] = self.refused.get(err.code, 0) + 1

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        return {"spawned": self.spawned, "refused": self.refused}


class MemHogAgent(BaseAgent):
    """Holds ``mb`` MiB of touched memory from start (``grow_mb`` more on every tick)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.blocks: list[bytearray] = []

    def _grab(self, mb: int) -> None:
        block = bytearray(mb << 20)
        for i in range(0, len(block), 4096):  # touch every page so it counts as resident
            block[i] = 1
        self.blocks.append(block)

    def start(self, ctx: SyncContext) -> None:
        self._grab(int(self.config.get("mb", 0)))

    def tick(self, ctx: SyncContext) -> None:
        if self.config.get("grow_mb"):
            self._grab(int(self.config["grow_mb"]))


class CrasherAgent(BaseAgent):
    """Exits with ``code`` after ``after`` seconds, or when sent a ``crash`` call."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.born = time.monotonic()

    def tick(self, ctx: SyncContext) -> None:
        after = self.config.get("after")
        if after is not None and time.monotonic() - self.born >= float(after):
            os._exit(int(self.config.get("code", 1)))

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "crash":
            os._exit(int(body.get("code", 1)))
        return super().handle(ctx, kind, body, sender)


class SpinnerAgent(BaseAgent):
    """Keeps a core busy: every tick spins until just before the next one."""

    def tick(self, ctx: SyncContext) -> None:
        end = time.monotonic() + 0.95
        while time.monotonic() < end:
            pass


class HelperAgent(BaseAgent):
    """Starts a subprocess of its own (``sleep``), to check it dies with the VSM's group."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ctx: SyncContext) -> None:
        self.proc = subprocess.Popen(["sleep", "300"])

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        return {"helper_pid": self.proc.pid if self.proc else None}


class HelperHogAgent(HelperAgent):
    """Its subprocess holds ``mb`` MiB of touched memory; the agent itself holds none."""

    def start(self, ctx: SyncContext) -> None:
        hold = "import sys, time; block = b'x' * (int(sys.argv[1]) << 20); time.sleep(300)"
        mb = str(int(self.config.get("mb", 100)))
        self.proc = subprocess.Popen([sys.executable, "-c", hold, mb])


def register_agents(registry: AgentRegistry) -> None:
    registry.register("spawner", SpawnerAgent)
    registry.register("bomber", BomberAgent)
    registry.register("memhog", MemHogAgent)
    registry.register("crasher", CrasherAgent)
    registry.register("helper", HelperAgent)
    registry.register("helperhog", HelperHogAgent)
    registry.register("spinner", SpinnerAgent)
