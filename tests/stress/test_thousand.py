"""1,000 VSMs, flat and as a deep/wide tree, on a private broker node (the shared broker's
open-files limit would not survive 1,000 connections). Nothing may be left behind."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.support.harness import DaemonProc, is_standby, poll_for, queue_exists, running_daemon
from vsmctl.client import VsmClient
from vsmd.broker.embedded import EmbeddedBroker
from vsmd.bus.topology import Topology
from vsmd.protocol import SpawnConfig

pytestmark = pytest.mark.stress

N = 1000
CONFIG = {"max_total": 1200, "max_children": 1000, "spawn_timeout": 120.0, "sample_interval": 5.0}


def vsm_pids(d: DaemonProc) -> set[int]:
    fork_servers = [
        p for p in psutil.Process(d.proc.pid).children() if "forkserver" in " ".join(p.cmdline())
    ]
    return {c.pid for fs in fork_servers for c in fs.children() if not is_standby(c)}


def leftovers(d: DaemonProc, ids: list[str]) -> list[str]:
    topo = Topology(d.namespace)
    queues = [i for i in ids if queue_exists(d.broker_url, topo.inbox(i))]
    journal = d.state_dir / f"journal-{d.namespace}.db"
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT COUNT(*) FROM vsms").fetchone()[0]
    return queues + ([f"{rows} journal rows"] if rows else [])


def spawn_flat(d: DaemonProc, n: int) -> list[str]:
    def worker(chunk: range) -> list[str]:
        with VsmClient(d.broker_url, d.namespace, timeout=120) as c:
            return [c.spawn_recursive_vsm(None, SpawnConfig(name=f"f{i}")).id for i in chunk]

    chunks = [range(k, n, 8) for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        return [i for ids in pool.map(worker, chunks) for i in ids]


def test_thousand_flat(node: EmbeddedBroker, tmp_path: Path) -> None:
    with running_daemon(node.url, tmp_path / "state", config=CONFIG) as d:
        ids = spawn_flat(d, N)
        c = d.client(timeout=120)
        listed = c.list_child_vsms()
        assert len(listed) == N and all(v.status == "running" for v in listed)
        pids = vsm_pids(d)
        assert len(pids) == N
        removed = [i for vsm_id in ids for i in c.terminate_child_vsm(vsm_id)]
        assert sorted(removed) == sorted(ids)
        assert c.list_child_vsms() == []
        poll_for(
            lambda: not any(psutil.pid_exists(p) for p in pids),
            timeout=60,
            what="every VSM process to go",
        )
        assert leftovers(d, ids) == []


def test_thousand_as_a_tree(node: EmbeddedBroker, tmp_path: Path) -> None:
    with running_daemon(node.url, tmp_path / "state", config=CONFIG) as d:
        c = d.client(timeout=120)
        roots = [
            c.spawn_recursive_vsm(
                None, SpawnConfig(name=f"r{i}", agent="tree", settings={"fanout": 10, "levels": 2})
            )
            for i in range(9)
        ]
        total = 9 * (1 + 10 + 100)

        def grown() -> bool:
            vsms = c.list_child_vsms()
            return len(vsms) == total and all(v.status == "running" for v in vsms)

        poll_for(grown, timeout=300, interval=1.0, what=f"{total} VSMs")
        vsms = c.list_child_vsms()
        assert max(v.depth for v in vsms) == 3
        assert sum(1 for v in vsms if v.depth == 3) == 900
        ids = [v.id for v in vsms]
        pids = vsm_pids(d)
        assert len(pids) == total
        for root in roots:
            assert len(c.terminate_child_vsm(root.id)) == 111
        poll_for(
            lambda: not any(psutil.pid_exists(p) for p in pids),
            timeout=60,
            what="every VSM process to go",
        )
        assert leftovers(d, ids) == []
