"""Daemon restart at scale: 1,000 VSMs (10 roots of 99 children) on a private broker node; kill -9
of vsmd takes every one of them along; a new vsmd on the same namespace and state directory
restores all 1,000 from its journal, same ids and paths, new processes. Nothing may be left
behind. Prints the figure kept in docs/reliability.md ("Daemon restart at scale")."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.support.harness import (
    DaemonProc,
    cleanup_namespace,
    poll_for,
    queue_exists,
    start_daemon,
)
from vsmctl.client import VsmClient
from vsmd.broker.embedded import EmbeddedBroker
from vsmd.bus.topology import Topology
from vsmd.protocol import SpawnConfig, VsmInfo

pytestmark = pytest.mark.stress

ROOTS = 10
CHILDREN = 99
N = ROOTS * (1 + CHILDREN)
THREADS = 8
CONFIG = {"max_total": 1200, "spawn_timeout": 120.0, "sample_interval": 5.0}


def spawn_all(d: DaemonProc, wanted: list[tuple[str | None, str]]) -> list[VsmInfo]:
    def worker(chunk: list[tuple[str | None, str]]) -> list[VsmInfo]:
        with VsmClient(d.broker_url, d.namespace, timeout=120) as c:
            return [c.spawn_recursive_vsm(p, SpawnConfig(name=n), True) for p, n in chunk]

    with ThreadPoolExecutor(THREADS) as pool:
        return [
            v for vs in pool.map(worker, [wanted[k::THREADS] for k in range(THREADS)]) for v in vs
        ]


def vsm_processes(ids: set[str]) -> dict[str, list[int]]:
    """Pids of the live processes titled ``vsm <id> ...`` for our ids."""
    found: dict[str, list[int]] = {}
    for p in psutil.process_iter(["cmdline", "status"]):
        title = " ".join(p.info["cmdline"] or ())
        if title.startswith("vsm ") and p.info["status"] != psutil.STATUS_ZOMBIE:
            vsm_id = title.split()[1]
            if vsm_id in ids:
                found.setdefault(vsm_id, []).append(p.pid)
    return found


def alive(p: psutil.Process) -> bool:
    # A zombie has ended; who reaps it once vsmd and its fork server are gone is init's business.
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def all_running(c: VsmClient) -> list[VsmInfo] | None:
    vsms = c.list_child_vsms()
    return vsms if len(vsms) == N and all(v.status == "running" for v in vsms) else None


def clean_up(d: DaemonProc, c: VsmClient, ids: set[str]) -> None:
    for root in [v for v in c.list_child_vsms() if v.parent is None]:
        assert len(c.terminate_child_vsm(root.id)) == 1 + CHILDREN
    assert c.list_child_vsms() == []
    poll_for(lambda: not vsm_processes(ids), timeout=60, what="every VSM process to go")
    topo = Topology(d.namespace)
    assert [i for i in ids if queue_exists(d.broker_url, topo.inbox(i))] == []
    with sqlite3.connect(d.state_dir / f"journal-{d.namespace}.db") as db:
        assert db.execute("SELECT COUNT(*) FROM vsms").fetchone()[0] == 0


def kill_9(d: DaemonProc, vsms: list[VsmInfo]) -> float:
    """kill -9 vsmd; its fork server and every one of its VSMs must go with it. Seconds until the
    last is gone."""
    procs = [psutil.Process(v.pid) for v in vsms if v.pid is not None]
    assert len(procs) == N
    procs += [
        p for p in psutil.Process(d.proc.pid).children() if "forkserver" in " ".join(p.cmdline())
    ]
    assert len(procs) == N + 1
    began = time.monotonic()
    d.proc.kill()
    d.proc.wait()
    poll_for(
        lambda: not any(alive(p) for p in procs),
        timeout=60,
        interval=0.2,
        what="every VSM of the killed vsmd to die",
    )
    return time.monotonic() - began


@pytest.mark.timeout(900)
def test_a_new_vsmd_restores_1000_vsms_after_kill_9(node: EmbeddedBroker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_daemon(node.url, state, config=CONFIG)
    second: DaemonProc | None = None
    try:
        began = time.monotonic()
        roots = spawn_all(first, [(None, f"r{i}") for i in range(ROOTS)])
        spawn_all(first, [(r.id, f"c{k}") for r in roots for k in range(CHILDREN)])
        c1 = first.client(timeout=120)
        before = poll_for(lambda: all_running(c1), timeout=60, what=f"{N} VSMs")
        ids = {v.id for v in before}
        print(f"\n{N} VSMs spawned through the admin queue in {time.monotonic() - began:.1f} s")
        print(f"kill -9 of vsmd: all {N} VSMs gone within {kill_9(first, before):.1f} s")
        assert vsm_processes(ids) == {}

        began = time.monotonic()
        second = start_daemon(node.url, state, namespace=first.namespace, config=CONFIG)
        c = second.client(timeout=120)
        after = poll_for(lambda: all_running(c), timeout=300, interval=0.5, what=f"{N} restored")
        restored_s = time.monotonic() - began
        print(f"a new vsmd restored all {N} in {restored_s:.1f} s (start -> all running)")

        assert {(v.id, v.path, v.parent) for v in after} == {
            (v.id, v.path, v.parent) for v in before
        }
        assert {v.pid for v in after}.isdisjoint(v.pid for v in before)
        assert vsm_processes(ids) == {v.id: [v.pid] for v in after}
        clean_up(second, c, ids)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        cleanup_namespace(node.url, first.namespace)
