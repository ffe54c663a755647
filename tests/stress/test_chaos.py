"""Chaos: 300 VSMs in trees of depth 3 and 4 with mixed restart policies, on a private broker
node. For 60 s random VSMs at every depth get kill -9, a few a second, and the fork server gets
it once. Once the tree has settled nothing may be left behind or out of place: no orphan, no
zombie, the registry equal to the processes, every permanent and transient VSM running, one
inbox per running VSM and none more, the daemon's memory and descriptors back near where they
were. Prints the figures kept in docs/reliability.md ("Chaos")."""

from __future__ import annotations

import collections
import random
import sqlite3
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support.harness import DaemonProc, is_standby, poll_for, running_daemon
from vsmctl.client import VsmClient
from vsmd.broker.embedded import EmbeddedBroker, _tool
from vsmd.bus.topology import Topology
from vsmd.protocol import Policy, SpawnConfig, VsmInfo

pytestmark = pytest.mark.stress

N = 300
ROOTS = 10  # half of the trees get a fourth level
FANOUT = 3  # children of a root, and of each VSM at depth 2
CHAOS_SECONDS = 60.0
KILLS_PER_SECOND = 3.0
FORKSERVER_AT = 20.0  # seconds into the chaos
POLICIES = ("permanent", "transient", "temporary")
THREADS = 6
CONFIG = {
    "max_total": 400,
    "spawn_timeout": 120.0,
    "sample_interval": 5.0,
    # The drill is about what survives kills, not restart intensity: a VSM killed five times
    # by chance (kills are random) must not be marked failed, and backoffs stay short.
    "max_restarts": 1000,
    "backoff_max": 5.0,
}
UNSETTLED = {"starting", "backoff", "stopping"}
LIST_QUEUES = ("list_queues", "-q", "--no-table-headers", "name")
MIB = 1 << 20


# --- what the machine and the broker hold ------------------------------------------------------


def vsm_processes(ids: set[str]) -> dict[str, list[int]]:
    """Pids of the processes titled ``vsm <id> ...`` for our ids (setproctitle in the VSM)."""
    found: dict[str, list[int]] = collections.defaultdict(list)
    for p in psutil.process_iter(["cmdline", "status"]):
        title = " ".join(p.info["cmdline"] or ())
        if not title.startswith("vsm ") or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        vsm_id = title.split()[1]
        if vsm_id in ids:
            found[vsm_id].append(p.pid)
    return dict(found)


def title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""  # gone meanwhile


def family(d: DaemonProc) -> list[psutil.Process]:
    return psutil.Process(d.proc.pid).children(recursive=True)


def zombies(d: DaemonProc) -> list[int]:
    out = []
    for p in family(d):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def fork_servers(d: DaemonProc) -> list[psutil.Process]:
    return [p for p in psutil.Process(d.proc.pid).children() if "forkserver" in title(p)]


def inbox_queues(broker: EmbeddedBroker, namespace: str) -> set[str]:
    """The namespace's VSM inboxes as the broker lists them (exclusive queues included)."""
    # As EmbeddedBroker runs it: its env selects the node's own cookie, -n its name.
    done = subprocess.run(
        [_tool("rabbitmqctl"), "-n", broker.spec.name, *LIST_QUEUES],
        env=broker._env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    prefix = Topology(namespace).inbox("")
    return {q for line in done.stdout.splitlines() if (q := line.strip()).startswith(prefix)}


def usage(d: DaemonProc) -> tuple[int, int]:
    p = psutil.Process(d.proc.pid)
    return p.memory_info().rss, p.num_fds()


# --- the forest ---------------------------------------------------------------------------------


def spawn_level(d: DaemonProc, wanted: list[tuple[str | None, str, str]]) -> list[VsmInfo]:
    """Spawn (parent, name, restart) each, in parallel."""

    def worker(chunk: list[tuple[str | None, str, str]]) -> list[VsmInfo]:
        with VsmClient(d.broker_url, d.namespace, timeout=120) as c:
            return [
                c.spawn_recursive_vsm(
                    parent, SpawnConfig(name=name, policy=Policy(restart=restart)), True
                )
                for parent, name, restart in chunk
            ]

    with ThreadPoolExecutor(THREADS) as pool:
        chunks = [wanted[k::THREADS] for k in range(THREADS)]
        return [v for vs in pool.map(worker, chunks) for v in vs]


def build_forest(d: DaemonProc) -> tuple[dict[str, VsmInfo], dict[str, str]]:
    """10 roots with 3 children of 3 children each; the rest at depth 4 under 5 of the trees.
    The VSMs by id, and the restart policy of each (mixed at every level)."""
    made: dict[str, VsmInfo] = {}
    restart: dict[str, str] = {}

    def level(parents: list[str | None]) -> list[VsmInfo]:
        start = len(made)
        policy = {
            f"n{start + k}": POLICIES[(start + k) % len(POLICIES)] for k in range(len(parents))
        }
        got = spawn_level(
            d, [(p, name, policy[name]) for p, name in zip(parents, policy, strict=True)]
        )
        made.update((v.id, v) for v in got)
        restart.update((v.id, policy[v.name]) for v in got)
        return got

    roots = level([None] * ROOTS)
    second = level([r.id for r in roots for _ in range(FANOUT)])
    third = level([v.id for v in second for _ in range(FANOUT)])
    deep_roots = {r.path for r in roots[::2]}
    under = [v.id for v in third if v.path.split(".")[0] in deep_roots]
    level([under[k % len(under)] for k in range(N - len(made))])
    return made, restart


# --- the killer ---------------------------------------------------------------------------------


def kill_vsm(vsm_id: str, pid: int) -> bool:
    """kill -9 the VSM's process, if ``pid`` still is it."""
    try:
        p = psutil.Process(pid)
        if not title(p).startswith(f"vsm {vsm_id} "):
            return False
        p.kill()  # psutil refuses if the pid now names another process
    except psutil.Error:
        return False
    return True


@dataclass
class Chaos:
    c: VsmClient
    restart: dict[str, str]  # id -> restart policy
    rng: random.Random = field(default_factory=lambda: random.Random(9))
    # id -> (time of the kill, old pid, "vsm" or "forkserver": what was killed)
    pending: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    # kill -> running again, in seconds, by what was killed
    recoveries: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    kills: collections.Counter[int] = field(default_factory=collections.Counter)  # by depth

    def observe(self) -> list[VsmInfo]:
        """List the tree; a VSM killed earlier that runs with a new pid has recovered."""
        vsms = self.c.list_child_vsms()
        now = time.monotonic()
        for v in vsms:
            kill = self.pending.get(v.id)
            if kill is not None and v.status == "running" and v.pid not in (None, kill[1]):
                self.recoveries[kill[2]].append(now - kill[0])
                del self.pending[v.id]
        return vsms

    def killed(self, v: VsmInfo, at: float, what: str) -> None:
        if self.restart[v.id] != "temporary" and v.id not in self.pending and v.pid:
            self.pending[v.id] = (at, v.pid, what)

    def kill_some(self, vsms: list[VsmInfo], n: int) -> None:
        """kill -9 ``n`` running VSMs: a random depth first, so every level gets its share."""
        by_depth: dict[int, list[VsmInfo]] = collections.defaultdict(list)
        for v in vsms:
            if v.status == "running" and v.pid and v.id not in self.pending:
                by_depth[v.depth].append(v)
        for _ in range(n):
            depths = sorted(k for k, vs in by_depth.items() if vs)
            if not depths:
                return
            depth = self.rng.choice(depths)
            v = by_depth[depth].pop(self.rng.randrange(len(by_depth[depth])))
            assert v.pid is not None
            if kill_vsm(v.id, v.pid):
                self.killed(v, time.monotonic(), "vsm")
                self.kills[depth] += 1

    def kill_fork_server(self, d: DaemonProc, vsms: list[VsmInfo]) -> psutil.Process:
        [fs] = fork_servers(d)
        at = time.monotonic()
        fs.kill()
        for v in vsms:
            if v.status == "running":
                self.killed(v, at, "forkserver")
        return fs

    def run(self, d: DaemonProc) -> psutil.Process | None:
        """The 60 s of chaos; the fork server it killed."""
        start = time.monotonic()
        killed_fs = None
        while (now := time.monotonic()) < start + CHAOS_SECONDS:
            vsms = self.observe()
            due = int((now - start) * KILLS_PER_SECOND) - sum(self.kills.values())
            self.kill_some(vsms, min(due, 5))
            if killed_fs is None and now - start >= FORKSERVER_AT:
                killed_fs = self.kill_fork_server(d, vsms)
            time.sleep(0.2)  # the pace of the killer, not a wait for a result
        return killed_fs

    def settled(self) -> bool:
        vsms = self.observe()
        return not self.pending and not any(v.status in UNSETTLED for v in vsms)


# --- the checks ---------------------------------------------------------------------------------


def check_statuses(vsms: list[VsmInfo], restart: dict[str, str]) -> None:
    wrong = [
        (v.path, restart[v.id], v.status, v.last_exit)
        for v in vsms
        if v.status != "running" and not (restart[v.id] == "temporary" and v.status == "failed")
    ]
    assert wrong == [], "only a killed temporary VSM may be down"
    assert len(vsms) == N and {v.id for v in vsms} == set(restart)


def check_processes(d: DaemonProc, c: VsmClient, killed_fs: psutil.Process) -> list[VsmInfo]:
    """The registry equals the processes (no orphan, no extra), no zombie, one new fork server."""
    ids = {v.id for v in c.list_child_vsms()}

    def exact() -> bool:
        running = {v.id: [v.pid] for v in c.list_child_vsms() if v.status == "running"}
        return vsm_processes(ids) == running

    poll_for(exact, timeout=60, interval=0.5, what="registry == processes")
    poll_for(lambda: not zombies(d), timeout=60, interval=0.5, what="no zombie")
    [fs] = fork_servers(d)
    assert not killed_fs.is_running(), "the killed fork server is reaped"
    strays = [
        p.pid
        for p in family(d)
        if p.pid != fs.pid and not title(p).startswith("vsm ") and not is_standby(p)
    ]
    assert strays == [], "the daemon's family: the fork server, its standby and VSMs only"
    return c.list_child_vsms()


def check_queues(node: EmbeddedBroker, d: DaemonProc, vsms: list[VsmInfo]) -> None:
    topo = Topology(d.namespace)
    live = {topo.inbox(v.id) for v in vsms if v.status == "running"}

    def exact() -> bool:
        return inbox_queues(node, d.namespace) == live

    poll_for(exact, timeout=60, interval=1.0, what="one inbox per running VSM")


def clean_up(node: EmbeddedBroker, d: DaemonProc, c: VsmClient, ids: set[str]) -> None:
    for root in [v for v in c.list_child_vsms() if v.parent is None]:
        c.terminate_child_vsm(root.id)
    assert c.list_child_vsms() == []
    poll_for(lambda: not vsm_processes(ids), timeout=60, what="every VSM process to go")
    poll_for(lambda: not inbox_queues(node, d.namespace), timeout=60, what="no inbox left")
    with sqlite3.connect(d.state_dir / f"journal-{d.namespace}.db") as db:
        assert db.execute("SELECT COUNT(*) FROM vsms").fetchone()[0] == 0


def report(chaos: Chaos, restarts: int, chaos_s: float, settle_s: float) -> None:
    total_s = chaos_s + settle_s
    print(
        f"\nchaos: {sum(chaos.kills.values())} VSMs killed over {chaos_s:.0f} s "
        f"(by depth {dict(sorted(chaos.kills.items()))}) and the fork server once; "
        f"{restarts} restarts in {total_s:.1f} s (settled {settle_s:.1f} s after the chaos): "
        f"{restarts / total_s:.1f} restarts/s"
    )
    for what, times in sorted(chaos.recoveries.items()):
        print(
            f"kill -9 of {what} -> running again ({len(times)} VSMs): "
            f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s"
        )
    print(f"worst time to running: {max(max(t) for t in chaos.recoveries.values()):.2f} s")


@pytest.mark.timeout(900)
def test_chaos(node: EmbeddedBroker, tmp_path: Path) -> None:
    with running_daemon(node.url, tmp_path / "state", config=CONFIG) as d:
        c = d.client(timeout=120)
        made, restart = build_forest(d)
        ids = set(made)
        assert sorted({v.depth for v in made.values()}) == [1, 2, 3, 4]
        rss0, fds0 = usage(d)
        chaos = Chaos(c, restart)
        begin = time.monotonic()
        killed_fs = chaos.run(d)
        assert killed_fs is not None
        chaos_s = time.monotonic() - begin
        poll_for(chaos.settled, timeout=300, interval=0.5, what="the tree to settle")
        settle_s = time.monotonic() - begin - chaos_s
        vsms = check_processes(d, c, killed_fs)
        check_statuses(vsms, restart)
        check_queues(node, d, vsms)
        rss1, fds1 = usage(d)
        print(f"\ndaemon RSS {rss0 / MIB:.1f} -> {rss1 / MIB:.1f} MiB, fds {fds0} -> {fds1}")
        assert rss1 < rss0 + 64 * MIB and fds1 < fds0 + 50
        report(chaos, sum(v.restarts for v in vsms), chaos_s, settle_s)
        assert chaos.kills.keys() == {1, 2, 3, 4}
        assert chaos.recoveries.keys() == {"vsm", "forkserver"}
        clean_up(node, d, c, ids)
