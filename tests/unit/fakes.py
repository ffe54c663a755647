"""Test doubles shared by the unit tests: a clock, a process pool, OS calls, a reply sink, the
host's free memory, a notify sink and a driver that builds running trees."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from vsmd.daemon.events import Event
from vsmd.daemon.registry import VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.timers import Timers
from vsmd.errors import VsmdError
from vsmd.protocol import Policy, SpawnConfig, VsmInfo
from vsmd.spec import VsmSpec


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_for(clock: FakeClock, timers: Timers, seconds: float) -> None:
    """Let ``seconds`` pass and run every timer that is due by then."""
    clock.advance(seconds)
    timers.run_due()


class HostMemory:
    """The ``available_mb`` seam of Admission: free memory the test sets."""

    def __init__(self, mb: float = 1_000_000.0) -> None:
        self.mb = mb

    def __call__(self) -> float:
        return self.mb


class Notes:
    """The manager's ``notify`` callable: every message meant for a VSM's agent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, rec: VsmRecord, kind: str, body: dict[str, Any]) -> None:
        self.sent.append((rec.id, kind, body))


def events_of(manager: SpawnManager, kind: str | None = None) -> list[Event]:
    """The manager's events (of one kind), oldest first."""
    every = manager.events.since(0, 1_000_000)
    return [e for e in every if kind is None or e.kind == kind]


class FakePool:
    """Records what the SpawnManager asks of the process layer; never starts anything."""

    def __init__(self) -> None:
        self.spawned: list[VsmSpec] = []
        self.kills: list[tuple[int, int]] = []
        self.spawn_error: VsmdError | None = None

    def spawn(self, spec: VsmSpec) -> None:
        if self.spawn_error is not None:
            raise self.spawn_error
        self.spawned.append(spec)

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))

    @property
    def last(self) -> VsmSpec:
        return self.spawned[-1]


class FakeOs:
    """The OsCalls seam of the fork server. ``fork`` never returns 0 (no child code runs here)."""

    def __init__(self) -> None:
        self.fork_results: list[int | OSError] = []
        self.waitpid_results: list[tuple[int, int]] = []
        self.waitpid_calls: list[tuple[int, int]] = []
        self.killpg_calls: list[tuple[int, int]] = []
        self.kill_calls: list[tuple[int, int]] = []
        self.killpg_error: OSError | None = None
        self.kill_error: OSError | None = None

    def fork(self) -> int:
        result = self.fork_results.pop(0)
        if isinstance(result, OSError):
            raise result
        if result <= 0:
            raise AssertionError("FakeOs.fork must return a positive pid (0 would be the child)")
        return result

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        self.waitpid_calls.append((pid, options))
        if not self.waitpid_results:
            raise ChildProcessError(10, "No child processes")
        return self.waitpid_results.pop(0)

    def killpg(self, pgid: int, sig: int) -> None:
        self.killpg_calls.append((pgid, sig))
        if self.killpg_error is not None:
            raise self.killpg_error

    def kill(self, pid: int, sig: int) -> None:
        self.kill_calls.append((pid, sig))
        if self.kill_error is not None:
            raise self.kill_error


class Replies:
    """A ``respond`` callable that keeps every reply, decoded."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []

    def __call__(self, reply: bytes) -> None:
        self.raw.append(reply)

    @property
    def decoded(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [orjson.loads(r) for r in self.raw]
        return out

    def only(self) -> dict[str, Any]:
        """The single reply; fails unless exactly one was sent."""
        assert len(self.raw) == 1, f"expected exactly one reply, got {self.raw!r}"
        return self.decoded[0]


class Tree:
    """Drives a SpawnManager the way the fork server and the VSMs would, to build running trees."""

    def __init__(self, manager: SpawnManager, pool: FakePool) -> None:
        self.manager = manager
        self.pool = pool
        self._pids = itertools.count(1001)

    def next_pid(self) -> int:
        return next(self._pids)

    def start(
        self, parent: str | None = None, name: str | None = None, policy: Policy | None = None
    ) -> VsmInfo:
        """Spawn, report the fork and report ready; returns the running VSM's info."""
        cfg = SpawnConfig(name=name, policy=policy or Policy())
        fut = self.manager.spawn_recursive_vsm(parent, cfg)
        if fut.done():
            fut.result()  # raises the refusal
        spec = self.pool.last
        pid = self.next_pid()
        self.manager.on_spawned(spec.vsm_id, pid)
        self.manager.on_ready(spec.vsm_id, pid)
        return fut.result(timeout=0)

    def come_back(self, vsm_id: str) -> int:
        """A restart of ``vsm_id`` was asked of the pool: report its fork and ready; its pid."""
        assert any(s.vsm_id == vsm_id for s in self.pool.spawned), f"{vsm_id} was not spawned"
        pid = self.next_pid()
        self.manager.on_spawned(vsm_id, pid)
        self.manager.on_ready(vsm_id, pid)
        return pid

    def pid(self, vsm_id: str) -> int:
        pid = self.manager.registry.get(vsm_id).pid
        assert pid is not None, f"{vsm_id} has no pid"
        return pid

    def exit(self, vsm_id: str, code: int | None = 0, sig: int | None = None) -> None:
        """The fork server reaped the VSM's process."""
        self.manager.on_exited(vsm_id, self.pid(vsm_id), code, sig)
