"""A broker that goes away and comes back: vsmd keeps its VSMs and answers again.

Runs against a private RabbitMQ node that this test may stop; the shared broker is untouched.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.harness import poll_for, run_tool, running_daemon
from vsmctl.client import VsmClient
from vsmd.broker.embedded import EmbeddedBroker
from vsmd.errors import VsmdError
from vsmd.protocol import SpawnConfig


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    node = EmbeddedBroker(tmp_path / "rabbit")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_vsmd_survives_a_broker_outage(private_broker: EmbeddedBroker, tmp_path: Path) -> None:
    url = private_broker.url
    with running_daemon(url, tmp_path / "state") as d:
        c = d.client()
        root = c.spawn_recursive_vsm(None, SpawnConfig(name="root"))
        kid = c.spawn_recursive_vsm(root.id, SpawnConfig(name="kid"))
        pids = [root.pid, kid.pid]
        c.close()

        private_broker.stop()
        # While the broker is away the VSMs keep running and vsmctl says no daemon answers.
        down = run_tool("vsmctl", "ping", "--timeout", "3", namespace=d.namespace, broker_url=url)
        assert down.returncode == 3
        assert all(pid is not None and psutil.pid_exists(pid) for pid in pids)
        assert d.proc.poll() is None

        private_broker.start()

        def answers() -> bool:
            try:
                with d.client(timeout=3) as probe:
                    return bool(probe.ping()["pong"])
            except VsmdError:
                return False

        poll_for(answers, timeout=60, interval=0.5, what="vsmd to answer after the outage")
        c = d.client()
        listed = {v.id: v for v in c.list_child_vsms()}
        assert set(listed) == {root.id, kid.id}
        assert [listed[root.id].pid, listed[kid.id].pid] == pids  # the same processes
        assert all(v.status == "running" for v in listed.values())
        # The VSMs reconnected too: they answer on their inboxes, declared anew.
        poll_for(lambda: _pong(d.client(timeout=2), kid.id), timeout=30, what="the VSM inbox")
        new = c.spawn_recursive_vsm(root.id, SpawnConfig(name="after"))
        assert new.status == "running"


def _pong(client: VsmClient, vsm_id: str) -> bool:
    try:
        return bool(client.ping_vsm(vsm_id)["pong"] == vsm_id)
    except VsmdError:
        return False
    finally:
        client.close()


@pytest.mark.slow  # about 15 s: make test-slow, and CI
def test_a_vsm_back_before_vsmd_still_reaches_its_replica(
    private_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """vsmd is held (SIGSTOP) across the broker's restart, so its VSM reconnects first and finds
    no daemon queue to sync with. What the VSM writes then must still reach the daemon's replica
    once vsmd is back, and a flush must wait for that instead of returning early."""
    config = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}
    with running_daemon(private_broker.url, tmp_path / "state", config=config) as d:
        c = d.client(timeout=60)
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="r", agent="recorder")).id
        c.call(vsm, "do", {"op": "state_set", "data": {"before": 1}, "flush": True})
        flushed: list[Any] = []

        def write_and_flush() -> None:
            with d.client(timeout=120) as w:
                cmd = {"op": "state_set", "data": {"during": 2}, "flush": True}
                flushed.append(w.call(vsm, "do", cmd, timeout=120))

        flusher = threading.Thread(target=write_and_flush, name="flusher")
        d.proc.send_signal(signal.SIGSTOP)
        try:
            private_broker.stop()
            private_broker.start()
            poll_for(lambda: _pong(d.client(timeout=2), vsm), timeout=60, what="the VSM back")
            flusher.start()
            with d.client(timeout=30) as v:
                poll_for(
                    lambda: v.call(vsm, "do", {"op": "state_show"})["result"]["data"].get("during"),
                    timeout=30,
                    what="the write while vsmd is away",
                )
            assert flushed == []  # vsmd is stopped: nothing can have journaled the write yet
        finally:
            d.proc.send_signal(signal.SIGCONT)
        flusher.join(150)
        assert flushed == [{"result": None}]
        # No polling: a flush that returned means vsmd's replica has the write.
        assert d.client(timeout=60).state(vsm)["data"] == {"before": 1, "during": 2}
