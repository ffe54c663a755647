"""Agents the tests register through the same registry the AgentFactory uses.

Loaded by the daemon and fork server via ``agent_modules = ["tests.support.agents"]``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, BaseAgent, Sender, SyncContext
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


class BomberAgent(AsyncAgent):
    """Asks for ``burst`` children at once on every tick, as a runaway agent would; counts
    what it got and what was refused. At once, so a rate limit is hit however slow spawns are."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.spawned = 0
        self.refused: dict[str, int] = {}

    async def tick(self, ctx: AgentContext) -> None:
        burst = int(self.config.get("burst", 10))
        results = await asyncio.gather(
            *(ctx.spawn_child() for _ in range(burst)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, VsmdError):
                self.refused[result.code] = self.refused.get(result.code, 0) + 1
            elif isinstance(result, BaseException):
                raise result
            else:
                self.spawned += 1

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
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
        # Holds the memory until it is killed (with its VSM, or by the test).
        hold = "import signal, sys; block = b'x' * (int(sys.argv[1]) << 20); signal.pause()"
        mb = str(int(self.config.get("mb", 100)))
        self.proc = subprocess.Popen([sys.executable, "-c", hold, mb])


class ForkBombAgent(BaseAgent):
    """Forks children that sleep ``child_seconds`` and exit, in a loop on a thread of its own,
    as a runaway agent would (subprocesses, not VSM spawns). Bounded here too: it stops after
    ``attempts`` forks tried (2,000), so a broken pids limit cannot take the host down.
    Any call answers what it got so far: the pids it made and its fork errors by name."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.pids: list[int] = []
        self.errors: dict[str, int] = {}
        self.attempts = 0
        self.done = False

    def start(self, ctx: SyncContext) -> None:
        threading.Thread(target=self._bomb, name="forkbomb", daemon=True).start()

    def _bomb(self) -> None:
        pause = float(self.config.get("pause", 0.005))
        for _ in range(int(self.config.get("attempts", 2000))):
            self.attempts += 1
            try:
                pid = os.fork()
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                if pid == 0:
                    try:
                        time.sleep(float(self.config.get("child_seconds", 60)))
                    finally:
                        os._exit(0)
                self.pids.append(pid)
            time.sleep(pause)
        self.done = True

    def handle(
        self, ctx: SyncContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        return {
            "pids": list(self.pids),
            "errors": dict(self.errors),
            "attempts": self.attempts,
            "done": self.done,
        }


class EscaperAgent(HelperAgent):
    """Starts a ``sleep`` in a session of its own: out of the VSM's process group, so only its
    cgroup still holds it."""

    def start(self, ctx: SyncContext) -> None:
        self.proc = subprocess.Popen(["sleep", "300"], start_new_session=True)


class ForkHogAgent(BaseAgent):
    """Forks ``children`` processes that each hold ``mb`` MiB of touched memory and sleep: each
    stays under its own RLIMIT_AS, so only a memory cgroup (their sum) can stop them."""

    def start(self, ctx: SyncContext) -> None:
        for _ in range(int(self.config.get("children", 8))):
            if os.fork() == 0:
                try:
                    block = bytearray(int(self.config.get("mb", 30)) << 20)
                    for i in range(0, len(block), 4096):  # touch every page: resident
                        block[i] = 1
                    signal.pause()  # until the OOM killer or the cgroup's emptying ends it
                finally:
                    os._exit(0)


def register_agents(registry: AgentRegistry) -> None:
    registry.register("spawner", SpawnerAgent)
    registry.register("bomber", BomberAgent)
    registry.register("memhog", MemHogAgent)
    registry.register("crasher", CrasherAgent)
    registry.register("helper", HelperAgent)
    registry.register("helperhog", HelperHogAgent)
    registry.register("spinner", SpinnerAgent)
    registry.register("forkbomb", ForkBombAgent)
    registry.register("escaper", EscaperAgent)
    registry.register("forkhog", ForkHogAgent)
