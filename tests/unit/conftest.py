"""Fixtures of the unit tests: fakes only, no broker and no processes."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import FakeClock, FakeOs, FakePool, HostMemory, Notes, Tree
from vsmd.agents import AgentRegistry
from vsmd.config import Config
from vsmd.daemon.journal import Journal
from vsmd.daemon.registry import VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.throttle import Admission
from vsmd.daemon.timers import Timers

# Round numbers so the timeout tests read easily.
UNIT_CONFIG = Config(spawn_timeout=10.0, stop_timeout=5.0)

MakeManager = Callable[..., SpawnManager]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timers(clock: FakeClock) -> Timers:
    return Timers(clock)


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def agents() -> AgentRegistry:
    return AgentRegistry()


@pytest.fixture
def removed() -> list[VsmRecord]:
    """Every record the manager reported as removed, in order."""
    return []


@pytest.fixture
def memory() -> HostMemory:
    """The host's free memory as admission sees it: plenty unless a test lowers it."""
    return HostMemory()


@pytest.fixture
def notes() -> Notes:
    return Notes()


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(journal_path: Path) -> Iterator[Journal]:
    """A real SQLite journal in the test's own directory."""
    j = Journal(journal_path)
    yield j
    j.close()


@pytest.fixture
def make_manager(
    pool: FakePool,
    timers: Timers,
    clock: FakeClock,
    agents: AgentRegistry,
    removed: list[VsmRecord],
    memory: HostMemory,
    notes: Notes,
) -> MakeManager:
    """A SpawnManager on the fakes; keyword arguments override fields of the unit config.

    ``journal=`` attaches a journal. Admission runs on the fake clock and fake free memory.
    """

    def make(journal: Journal | None = None, **overrides: Any) -> SpawnManager:
        config = dataclasses.replace(UNIT_CONFIG, **overrides)
        return SpawnManager(
            config,
            pool,
            timers,
            agents,
            on_removed=removed.append,
            journal=journal,
            admission=Admission(config, clock=clock, available_mb=memory),
            notify=notes,
        )

    return make


@pytest.fixture
def manager(make_manager: MakeManager) -> SpawnManager:
    return make_manager()


@pytest.fixture
def tree(manager: SpawnManager, pool: FakePool) -> Tree:
    return Tree(manager, pool)


# The fork server's tests (test_forkserver.py, test_standby.py): fake OS calls, and a real
# SOCK_SEQPACKET pair whose other end is the daemon's.
@pytest.fixture
def fake_os() -> FakeOs:
    return FakeOs()


@pytest.fixture
def socks() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    with ours, theirs:
        yield ours, theirs


@pytest.fixture
def daemon_end(socks: tuple[socket.socket, socket.socket]) -> socket.socket:
    """The daemon's end of the socket: what the fork server sends arrives here."""
    return socks[1]
