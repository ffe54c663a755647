"""cgroups on fake trees: finding the daemon's own cgroups (v1 and v2), the layout, limits,
emptying and removal, OOM counters, and the manager's hooks. No kernel cgroup is touched."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.unit.fakes import FakePool, Tree, events_of
from vsmd.config import Config
from vsmd.daemon import cgroups
from vsmd.daemon.cgroups import (
    LEAF,
    V2_DAEMON_LEAF,
    Cgroups,
    Limits,
    detect,
    find_v1,
    find_v2,
    hard_memory,
    leaf_limits,
    subtree_limits,
    summed_events,
)
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.errors import SpawnError
from vsmd.protocol import Policy
from vsmd.supervisor.cgroups import join_cgroups, sweep

V1_CGROUP = """\
9:name=systemd:/
8:pids:/ctr
4:memory:/jobs/j1
1:cpu,cpuacct:/
0::/
"""


def v1_mountinfo(tmp: Path) -> str:
    return "\n".join(
        [
            f"30 25 0:26 / {tmp}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            f"31 25 0:27 / {tmp}/memory rw - cgroup cgroup rw,memory",
            # Mounted from inside the hierarchy, as a container sees it.
            f"32 25 0:28 /ctr {tmp}/pids rw - cgroup cgroup rw,pids",
            f"33 25 0:29 / {tmp}/unified rw - cgroup2 cgroup2 rw",
            f"34 25 0:30 / {tmp}/with\\040space rw - tmpfs tmpfs rw",
        ]
    )


def fake_rmdir(d: Path) -> None:
    """A cgroup directory goes with its control files; one with child cgroups does not."""
    if any(p.is_dir() for p in d.iterdir()):
        raise OSError(16, "Device or resource busy")  # EBUSY, as the kernel answers
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


class Killer:
    """os.kill on the fake tree: a killed pid leaves every cgroup.procs it is in."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.killed: list[tuple[int, int]] = []

    def __call__(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))
        for procs in self.top.rglob("cgroup.procs"):
            left = [p for p in procs.read_text().split() if p != str(pid)]
            procs.write_text("\n".join(left))


# --- finding the daemon's cgroups ------------------------------------------------------------


def test_find_v1_joins_mount_points_and_the_daemons_own_cgroups(tmp_path: Path) -> None:
    found = find_v1(V1_CGROUP.replace("8:pids:/ctr", "8:pids:/ctr/a"), v1_mountinfo(tmp_path))
    assert found == {
        "memory": tmp_path / "memory" / "jobs" / "j1",
        "cpu": tmp_path / "cpu,cpuacct",
        "pids": tmp_path / "pids" / "a",
    }


def test_find_v2_needs_controllers_to_hand_down(tmp_path: Path) -> None:
    base = tmp_path / "unified" / "system.slice" / "vsmd.service"
    base.mkdir(parents=True)
    own = "0::/system.slice/vsmd.service\n"
    assert find_v2(own, v1_mountinfo(tmp_path)) == {}  # no cgroup.controllers: none
    (base / "cgroup.controllers").write_text("")
    assert find_v2(own, v1_mountinfo(tmp_path)) == {}  # as on these machines
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert find_v2(own, v1_mountinfo(tmp_path)) == {"memory": base, "cpu": base, "pids": base}


def test_detect_says_why_there_are_none() -> None:
    reason = detect("ns", proc_cgroup="0::/\n", mountinfo="")
    assert isinstance(reason, str)
    assert "cgroup v2 has no memory, cpu or pids controller" in reason
    assert "cgroup v1 has no memory, cpu or pids controller" in reason


def test_setup_off_uses_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        assert cgroups.setup(Config(cgroups="off")) is None
    assert 'cgroups: off (cgroups = "off"); hard limits are rlimits' in caplog.text


# --- limits ----------------------------------------------------------------------------------


def test_limits_sit_at_twice_the_quotas() -> None:
    leaf = leaf_limits(Policy(memory_mb=100, cpu_percent=25, max_procs=20))
    assert leaf == Limits(
        memory_bytes=(200 + cgroups.RUNTIME_MB) * 2**20,
        cpu_quota_us=50_000,
        pids=20 + cgroups.RUNTIME_TASKS,
    )
    assert leaf_limits(Policy()) == Limits()
    assert subtree_limits(Policy(budget_memory_mb=300)).memory_bytes == hard_memory(300)
    assert subtree_limits(Policy(memory_mb=300)) == Limits()


# --- cgroup v2, in a delegated subtree --------------------------------------------------------


@pytest.fixture
def v2(tmp_path: Path) -> tuple[Cgroups, Path, Killer]:
    base = tmp_path / "unified" / "system.slice" / "vsmd.service"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpu memory pids")
    (base / "cgroup.procs").write_text("111\n222\n")  # the daemon, as systemd started it
    killer = Killer(tmp_path)
    found = detect("ns", 500, "0::/system.slice/vsmd.service\n", v1_mountinfo(tmp_path))
    assert isinstance(found, Cgroups)
    found._kill, found._rmdir = killer, fake_rmdir
    return found, base, killer


def test_v2_start_moves_the_daemon_to_a_leaf_and_hands_controllers_down(
    v2: tuple[Cgroups, Path, Killer],
) -> None:
    cg, base, _ = v2
    assert cg.version == 2 and cg.roots == [base / "vsmd-ns"]
    assert (base / V2_DAEMON_LEAF / "cgroup.procs").read_text() in ("111", "222")
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    root = base / "vsmd-ns"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (root / "memory.max").read_text() == str(hard_memory(500))


def test_v2_a_vsm_is_nested_under_its_parent_with_its_limits(
    v2: tuple[Cgroups, Path, Killer],
) -> None:
    cg, base, _ = v2
    root = base / "vsmd-ns"
    cg.prepare("p", None, Limits(), subtree_limits(Policy(budget_memory_mb=100)))
    procs = cg.prepare(
        "c", "p", leaf_limits(Policy(memory_mb=10, cpu_percent=5, max_procs=3)), Limits()
    )
    leaf = root / "p" / "c" / LEAF
    assert procs == (str(leaf / "cgroup.procs"),)
    assert (root / "p" / "memory.max").read_text() == str(hard_memory(100))
    assert (root / "p" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert not (leaf / "cgroup.subtree_control").exists()  # processes live only in leaves
    assert (leaf / "memory.max").read_text() == str(hard_memory(10))
    assert (leaf / "cpu.max").read_text() == "10000 100000"
    assert (leaf / "pids.max").read_text() == str(3 + cgroups.RUNTIME_TASKS)
    # A new cgroup has no limit to begin with: "no limit" is not written to it.
    assert not (root / "p" / "c" / "pids.max").exists()


def test_v2_empty_kills_the_cgroup_and_whatever_is_still_listed(
    v2: tuple[Cgroups, Path, Killer],
) -> None:
    cg, base, killer = v2
    cg.prepare("a", None, Limits(), Limits())
    leaf = base / "vsmd-ns" / "a" / LEAF
    (leaf / "cgroup.procs").write_text("7\n8\n")
    assert cg.empty("a") == 2
    assert (leaf / "cgroup.kill").read_text() == "1"
    assert sorted(killer.killed) == [(7, signal.SIGKILL), (8, signal.SIGKILL)]
    assert cg.empty("unknown") == 0


def test_v2_oom_kills_are_counted_once(v2: tuple[Cgroups, Path, Killer]) -> None:
    cg, base, _ = v2
    cg.prepare("a", None, Limits(), Limits())
    events = base / "vsmd-ns" / "a" / LEAF / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert cg.new_oom_kills("a") == 2
    assert cg.new_oom_kills("a") == 0
    events.write_text("low 0\nhigh 0\nmax 4\noom 3\noom_kill 3\n")
    assert cg.new_oom_kills("a") == 1


def test_v2_sums_events_in_ancestors_unless_mounted_with_local_events(tmp_path: Path) -> None:
    mountinfo = v1_mountinfo(tmp_path)
    assert summed_events(mountinfo)
    local = mountinfo.replace("cgroup2 cgroup2 rw", "cgroup2 cgroup2 rw,memory_localevents")
    assert not summed_events(local)
    assert not summed_events("")  # no v2 hierarchy at all


def test_v2_one_counter_of_the_namespace_tells_whether_any_leaf_moved(
    v2: tuple[Cgroups, Path, Killer],
) -> None:
    cg, base, _ = v2
    assert cg.summed_events
    events = base / "vsmd-ns" / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    assert cg.oom_anywhere()  # nothing read before: the leaves must be read once
    assert not cg.oom_anywhere()
    events.write_text("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n")
    assert cg.oom_anywhere()
    assert not cg.oom_anywhere()
    events.unlink()
    assert cg.oom_anywhere()  # unreadable: it cannot tell, so every leaf is read


def test_v1_cannot_tell_so_every_sample_reads_the_leaves(v1: tuple[Cgroups, Path, Killer]) -> None:
    cg, _, _ = v1
    assert not cg.summed_events
    assert cg.oom_anywhere() and cg.oom_anywhere()


def test_the_sampler_reads_the_leaves_only_when_the_namespace_counter_moved(
    v2: tuple[Cgroups, Path, Killer], manager: SpawnManager, tree: Tree
) -> None:
    cg, base, _ = v2
    manager.cgroups = cg
    a, b = tree.start(name="a"), tree.start(name="b")
    total = base / "vsmd-ns" / "memory.events"

    def kills(vsm_id: str, n: int) -> None:
        (base / "vsmd-ns" / vsm_id / LEAF / "memory.events").write_text(f"oom_kill {n}\n")

    def reported() -> list[str | None]:
        return [e.vsm_id for e in events_of(manager) if e.kind == "oom_kill"]

    total.write_text("oom_kill 0\n")
    manager.sample()
    assert reported() == []
    kills(b.id, 1)
    total.write_text("oom_kill 1\n")
    manager.sample(0, 1_000_000)  # a slice b is not in: the kill may be in any leaf
    assert reported() == [b.id]
    kills(a.id, 1)  # the counter of the namespace did not move: no leaf is read
    manager.sample()
    assert reported() == [b.id]
    total.write_text("oom_kill 2\n")
    manager.sample()
    assert reported() == [b.id, a.id]


def test_v2_an_abandoned_vsm_keeps_its_cgroup_until_it_goes(
    v2: tuple[Cgroups, Path, Killer],
) -> None:
    cg, base, _ = v2
    root = base / "vsmd-ns"
    cg.prepare("p", None, Limits(), Limits())
    cg.prepare("c", "p", Limits(), Limits())
    cg.remove("p", live={"c"})  # c was abandoned: it lives on where it was started
    assert not (root / "p" / LEAF).exists() and (root / "p" / "c" / LEAF).is_dir()
    cg.prepare("c", None, Limits(), Limits())  # restarted under its new parent: same place
    assert (root / "p" / "c" / LEAF).is_dir() and not (root / "c").exists()
    cg.remove("c", live=set())
    assert not (root / "p").exists() and root.is_dir()


def test_v2_stop_removes_everything_below_the_namespace(
    v2: tuple[Cgroups, Path, Killer],
) -> None:
    cg, base, killer = v2
    cg.prepare("p", None, Limits(), Limits())
    cg.prepare("c", "p", Limits(), Limits())
    (base / "vsmd-ns" / "p" / "c" / LEAF / "cgroup.procs").write_text("9")
    cg.stop()
    assert killer.killed == [(9, signal.SIGKILL)]
    assert not (base / "vsmd-ns").exists() and (base / V2_DAEMON_LEAF).is_dir()


# --- cgroup v1, a hierarchy per controller ----------------------------------------------------


@pytest.fixture
def v1(tmp_path: Path) -> tuple[Cgroups, Path, Killer]:
    for d in ("cpu,cpuacct", "memory/jobs/j1", "pids"):
        (tmp_path / d).mkdir(parents=True)
    # A previous daemon of the namespace left these behind.
    (tmp_path / "pids" / "vsmd-ns" / "old" / LEAF).mkdir(parents=True)
    (tmp_path / "pids" / "vsmd-ns" / "old" / LEAF / "cgroup.procs").write_text("5")
    killer = Killer(tmp_path)
    found = Cgroups(1, find_v1(V1_CGROUP, v1_mountinfo(tmp_path)), "ns", killer, fake_rmdir)
    found.start()
    return found, tmp_path, killer


def test_v1_start_removes_a_predecessors_leftovers(v1: tuple[Cgroups, Path, Killer]) -> None:
    cg, tmp, killer = v1
    assert killer.killed == [(5, signal.SIGKILL)]
    assert cg.roots == sorted(
        [tmp / "cpu,cpuacct" / "vsmd-ns", tmp / "memory/jobs/j1/vsmd-ns", tmp / "pids/vsmd-ns"]
    )
    assert not (tmp / "pids" / "vsmd-ns" / "old").exists()


def test_v1_limits_go_to_each_controllers_hierarchy(v1: tuple[Cgroups, Path, Killer]) -> None:
    cg, tmp, _ = v1
    policy = Policy(memory_mb=10, cpu_percent=5, max_procs=3)
    procs = cg.prepare("a", None, leaf_limits(policy), Limits())
    leaves = [
        tmp / "cpu,cpuacct/vsmd-ns/a",
        tmp / "memory/jobs/j1/vsmd-ns/a",
        tmp / "pids/vsmd-ns/a",
    ]
    assert procs == tuple(str(d / LEAF / "cgroup.procs") for d in leaves)
    cpu, memory, pids = (d / LEAF for d in leaves)
    assert (memory / "memory.limit_in_bytes").read_text() == str(hard_memory(10))
    assert (cpu / "cpu.cfs_quota_us").read_text() == "10000"
    assert not (cpu / "cpu.cfs_period_us").exists()  # a new cgroup's period already
    assert (pids / "pids.max").read_text() == str(3 + cgroups.RUNTIME_TASKS)
    assert not (pids / "memory.limit_in_bytes").exists()
    assert not (leaves[1] / "memory.limit_in_bytes").exists()
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cg.new_oom_kills("a") == 1


def test_v1_empty_reads_every_hierarchy_until_nothing_is_left(
    v1: tuple[Cgroups, Path, Killer],
) -> None:
    cg, tmp, killer = v1
    cg.prepare("a", None, Limits(), Limits())
    (tmp / "pids/vsmd-ns/a" / LEAF / "cgroup.procs").write_text("11\n12")
    (tmp / "memory/jobs/j1/vsmd-ns/a" / LEAF / "cgroup.procs").write_text("11\n13")
    assert cg.empty("a") == 3
    assert sorted(pid for pid, _ in killer.killed if pid != 5) == [11, 12, 13]
    cg.remove("a", live=set())
    assert not (tmp / "pids/vsmd-ns/a").exists()
    assert not (tmp / "memory/jobs/j1/vsmd-ns/a").exists()


def test_a_cgroup_that_cannot_be_made_fails_the_spawn(v1: tuple[Cgroups, Path, Killer]) -> None:
    cg, tmp, _ = v1
    (tmp / "pids/vsmd-ns/a").write_text("in the way")
    with pytest.raises(SpawnError, match="cannot set up the cgroup of VSM a"):
        cg.prepare("a", None, Limits(), Limits())


# --- the child's side and the manager's hooks -------------------------------------------------


def test_join_writes_our_pid_to_every_hierarchy(tmp_path: Path) -> None:
    files = (tmp_path / "a", tmp_path / "b")
    join_cgroups(tuple(str(f) for f in files))
    assert [f.read_text() for f in files] == [str(os.getpid())] * 2
    join_cgroups(())  # no cgroups: nothing to do


def _joined_in_child(procs_files: tuple[str, ...]) -> int:
    """join_cgroups in a forked child (one thread, as a VSM is then); its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            join_cgroups(procs_files)
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_join_moves_the_one_thread_through_tasks_on_cgroup_v1(tmp_path: Path) -> None:
    dirs = [tmp_path / "memory", tmp_path / "pids"]
    for d in dirs:
        d.mkdir()
        (d / "tasks").write_text("")
    assert _joined_in_child(tuple(str(d / "cgroup.procs") for d in dirs)) == 0
    # "0" is the calling thread, all of a process with one: no thread-group move.
    assert [(d / "tasks").read_text() for d in dirs] == ["0", "0"]
    assert not any((d / "cgroup.procs").exists() for d in dirs)


def test_join_with_threads_moves_the_thread_group(tmp_path: Path) -> None:
    (tmp_path / "tasks").write_text("")
    procs = tmp_path / "cgroup.procs"
    # pytest's process may run threads of its own; make sure of one more.
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        join_cgroups((str(procs),))
    finally:
        stop.set()
        helper.join()
    assert procs.read_text() == str(os.getpid())
    assert (tmp_path / "tasks").read_text() == ""


class FakeCgroups(Cgroups):
    def __init__(self) -> None:
        super().__init__(1, {}, "ns")
        self.calls: list[tuple[str, str]] = []
        self.oom: dict[str, int] = {}

    def prepare(
        self, vsm_id: str, parent_id: str | None, leaf: Limits, subtree: Limits
    ) -> tuple[str, ...]:
        self.calls.append(("prepare", vsm_id))
        return (f"/cg/{vsm_id}/cgroup.procs",)

    def empty(self, vsm_id: str) -> int:
        self.calls.append(("empty", vsm_id))
        return 0

    def remove(self, vsm_id: str, live: object) -> None:
        self.calls.append(("remove", vsm_id))

    def new_oom_kills(self, vsm_id: str) -> int:
        return self.oom.pop(vsm_id, 0)


def test_the_manager_prepares_empties_and_removes(
    manager: SpawnManager, pool: FakePool, tree: Tree
) -> None:
    fake = FakeCgroups()
    manager.cgroups = fake
    info = tree.start(name="a")
    assert pool.last.cgroup_procs == (f"/cg/{info.id}/cgroup.procs",)
    fake.oom[info.id] = 1
    manager.on_exited(info.id, info.pid or 0, None, signal.SIGKILL)
    rec = manager.registry.get(info.id)
    assert rec.last_reason is not None
    assert "out of memory: the kernel killed 1 process in its memory cgroup" in rec.last_reason
    assert "oom_kill" in [e.kind for e in events_of(manager)]
    manager.terminate_child_vsm(info.id)
    assert fake.calls == [("prepare", info.id), ("empty", info.id), ("remove", info.id)]


def test_an_orphaned_fork_server_sweeps_up_to_the_namespace(tmp_path: Path) -> None:
    root = tmp_path / "pids" / "vsmd-ns"
    leaves = [root / "p" / LEAF, root / "p" / "c" / LEAF, root / "q" / LEAF]
    for leaf in leaves:
        leaf.mkdir(parents=True)
    sweep([str(leaf / "cgroup.procs") for leaf in leaves[:2]])
    assert not (root / "p").exists()
    assert (root / "q" / LEAF).is_dir()  # not one of ours: it and the namespace stay
    sweep([str(leaves[2] / "cgroup.procs")])
    assert not root.exists() and (tmp_path / "pids").is_dir()


def test_v1_a_restart_writes_every_limit_so_a_looser_policy_takes_effect(
    v1: tuple[Cgroups, Path, Killer],
) -> None:
    cg, tmp, _ = v1
    cg.prepare("a", None, leaf_limits(Policy(memory_mb=10, cpu_percent=5, max_procs=3)), Limits())
    cg.prepare("a", None, Limits(), Limits())  # the same VSM again, its limits lifted
    memory = tmp / "memory/jobs/j1/vsmd-ns/a"
    cpu = tmp / "cpu,cpuacct/vsmd-ns/a"
    assert (memory / LEAF / "memory.limit_in_bytes").read_text() == "-1"
    assert (memory / "memory.limit_in_bytes").read_text() == "-1"
    assert (cpu / LEAF / "cpu.cfs_quota_us").read_text() == "-1"
    assert (cpu / LEAF / "cpu.cfs_period_us").read_text() == "100000"
    assert (tmp / "pids/vsmd-ns/a" / LEAF / "pids.max").read_text() == "max"
