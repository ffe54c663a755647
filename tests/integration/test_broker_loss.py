"""Broker loss under load: a private RabbitMQ node restarts while a client spawns and terminates
VSMs and every VSM writes state on each tick. No acknowledged admin command is lost or applied
twice (the idempotency key), every VSM reconnects, state converges, the registry is exact.

The shared broker is untouched: the node restarted here is the test's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmctl.client import VsmClient
from vsmd.broker.embedded import EmbeddedBroker
from vsmd.errors import SpawnError, VsmdError
from vsmd.protocol import SpawnConfig

AGENTS = ["tests.support.agents", "tests.support.reliability_agents"]
STABLE = 6  # tickers that live through the outage, under one root
GRACE = 15.0  # of the terminate under way during the outage: longer than a broker stop
PATIENCE = 120.0  # a client's timeout: long enough to wait out a broker restart


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    node = EmbeddedBroker(tmp_path / "rabbit")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@dataclass
class Churn:
    """Spawns a VSM, terminates the one before, again and again, recording every outcome."""

    client: VsmClient
    parent: str
    spawned: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # spawns the daemon answered as failed
    unknown: list[str] = field(default_factory=list)  # no answer at all: the outcome is lost
    acked_at: list[float] = field(default_factory=list)
    repeated: int = 0  # commands that had to be sent again (same key) to get their answer
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        live: str | None = None
        i = 0
        while not self.stop.is_set():
            i += 1
            before = self.client.retried
            try:
                cfg = SpawnConfig(name=f"w{i}", agent="ticker")
                new = self.client.spawn_recursive_vsm(self.parent, cfg).id
                self.spawned.append(new)
                self.acked_at.append(time.monotonic())
                if live is not None:
                    self.terminated += self.client.terminate_child_vsm(live)
                    self.acked_at.append(time.monotonic())
                live = new
            except SpawnError as err:  # a VSM that could not reach the broker to say ready
                self.refused.append(f"w{i}: {err.code} {err.message}")
            except VsmdError as err:  # CONFLICT or NOT_FOUND would be a command applied twice
                self.unknown.append(f"w{i}: {err.code} {err.message}")
                return
            finally:
                self.repeated += self.client.retried > before

    def acked_since(self, t: float) -> int:
        return sum(1 for a in self.acked_at if a > t)


def _answers(d: DaemonProc, vsm_id: str) -> bool:
    with VsmClient(d.broker_url, d.namespace, 3) as c:
        try:
            return bool(c.ping_vsm(vsm_id, timeout=3)["pong"] == vsm_id)
        except VsmdError:
            return False


def _assert_converges(c: VsmClient, ids: list[str]) -> None:
    """With the tickers paused, the daemon's replica of every VSM's data equals the VSM's own."""
    for i in ids:
        c.call(i, "pause")

    def differences() -> dict[str, tuple[object, object]]:
        seen = {i: (c.state(i)["data"], c.call(i, "show")["data"]) for i in ids}
        return {i: pair for i, pair in seen.items() if pair[0] != pair[1]}

    deadline = time.monotonic() + 30
    while (diff := differences()) and time.monotonic() < deadline:
        time.sleep(0.1)
    # On failure: each VSM whose replica differs, with (the daemon's data, the VSM's own).
    assert diff == {}


class SlowTerminate(threading.Thread):
    """``terminate`` of one VSM with a long grace, on a thread; its answer or error code."""

    def __init__(self, client: VsmClient, vsm_id: str) -> None:
        super().__init__(name="slow-terminate")
        self.client, self.vsm_id = client, vsm_id
        self.result: list[object] = []

    def run(self) -> None:
        try:
            self.result.append(self.client.terminate_child_vsm(self.vsm_id, GRACE))
        except VsmdError as err:
            self.result.append(f"{err.code} {err.message}")


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_broker_loss_under_load(private_broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = {"agent_modules": AGENTS, "max_children": 100}
    with running_daemon(private_broker.url, tmp_path / "state", config=config) as d:
        c = d.client(timeout=PATIENCE)
        root = c.spawn_recursive_vsm(None, SpawnConfig(name="root", agent="ticker"))
        stable = [
            c.spawn_recursive_vsm(root.id, SpawnConfig(name=f"s{i}", agent="ticker"))
            for i in range(STABLE)
        ]
        slow = c.spawn_recursive_vsm(
            root.id, SpawnConfig(name="slow", agent="ticker", settings={"ignore_term": True})
        )
        pids = {v.id: v.pid for v in [root, *stable]}
        churn = Churn(d.client(timeout=PATIENCE), root.id)
        loop = threading.Thread(target=churn.run, name="churn")
        loop.start()
        poll_for(lambda: churn.acked_since(0) >= 4, timeout=60, what="the churn to run")

        # A terminate under way when the broker goes (its VSM ignores SIGTERM and is killed
        # after the grace), done while the broker is away: its reply is lost, and when asked
        # again it must not run again (that would be NOT_FOUND).
        slow_stop = SlowTerminate(d.client(timeout=PATIENCE), slow.id)
        slow_stop.start()
        poll_for(lambda: c.show(slow.id).status == "stopping", timeout=30, what="slow stopping")

        down = time.monotonic()
        private_broker.stop()
        slow_pid = slow.pid
        assert slow_pid is not None
        poll_for(lambda: not psutil.pid_exists(slow_pid), timeout=GRACE + 30, what="slow killed")
        private_broker.start()
        up = time.monotonic()
        ids = [v.id for v in [root, *stable]]
        poll_for(
            lambda: all(_answers(d, i) for i in ids), timeout=90, what="every VSM to reconnect"
        )
        reconnected = time.monotonic() - up
        poll_for(lambda: churn.acked_since(up) >= 4, timeout=90, what="the churn after the outage")
        churn.stop.set()
        loop.join(PATIENCE + 30)
        slow_stop.join(PATIENCE + 30)

        # Nothing answered without a reply, nothing applied twice (that would be CONFLICT for
        # a spawn's name, NOT_FOUND for a terminate).
        assert churn.unknown == []
        assert slow_stop.result == [[slow.id]]
        # The registry is exactly what was acknowledged: spawned minus terminated.
        expected = {*ids, *churn.spawned} - set(churn.terminated)
        poll_for(
            lambda: {v.id for v in c.list_child_vsms()} == expected,
            timeout=30,
            what="the registry to equal spawned minus terminated",
        )
        # The VSMs that lived through it are the same processes, never restarted.
        for v in c.list_child_vsms():
            if v.id in pids:
                assert (v.pid, v.restarts, v.status) == (pids[v.id], 0, "running")
                assert v.pid is not None and psutil.pid_exists(v.pid)
        _assert_converges(c, sorted(expected))
        assert all(c.state(i)["data"]["n"] > 0 for i in ids)

        idem = c.ping()["idempotency"]
        avoided = idem["replayed"] + idem["attached"]
        resent = churn.client.retried + slow_stop.client.retried
        assert slow_stop.client.retried > 0 and avoided >= 1
        print(
            f"\nbroker loss: outage {up - down:.1f} s; all {len(ids)} VSMs answered "
            f"{reconnected:.1f} s after the broker was back; commands acknowledged "
            f"{len(churn.acked_at) + 1}, refused {churn.refused}, retried "
            f"{churn.repeated + 1} ({resent} sends again), duplicates avoided {avoided} "
            f"({idem})"
        )
