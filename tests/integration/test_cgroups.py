"""Hard limits the kernel enforces: every VSM in a cgroup of its own, with real processes.

These need cgroups the daemon may write: root (CI runs as root on this machine kind, so there
they must work and fail otherwise) or a delegated cgroup v2 subtree. Elsewhere they skip,
saying why.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.harness import (
    cleanup_namespace,
    new_namespace,
    poll_for,
    running_daemon,
    start_daemon,
)
from vsmctl.client import VsmClient
from vsmd.daemon.cgroups import (
    LEAF,
    RUNTIME_TASKS,
    Cgroups,
    detect,
    find_v1,
    find_v2,
    hard_memory,
)
from vsmd.protocol import Policy, SpawnConfig


@pytest.fixture(scope="module")
def usable() -> Iterator[None]:
    found = detect(new_namespace())
    if isinstance(found, str):
        if os.geteuid() == 0:
            pytest.fail(f"cgroups are not usable although we run as root: {found}")
        pytest.skip(f"cgroups need root or a delegated cgroup v2 subtree here: {found}")
    found.stop()
    yield


def vsm_cgroups(pid: int) -> dict[str, Path]:
    """Controller -> the cgroup directory the process is in."""
    own = Path(f"/proc/{pid}/cgroup").read_text()
    mounts = Path("/proc/self/mountinfo").read_text()
    return find_v2(own, mounts) or find_v1(own, mounts)


def procs(d: Path) -> set[int]:
    try:
        return {int(p) for p in (d / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()  # removed with its VSM: empty


def is_empty(d: Path) -> bool:
    return not procs(d)


def is_gone(d: Path) -> bool:
    return not d.exists()


def is_dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kinds(c: VsmClient, vsm_id: str) -> list[str]:
    return [e["kind"] for e in c.events()[1] if e["vsm_id"] == vsm_id]


@pytest.mark.usefixtures("usable")
def test_a_fork_bomb_is_capped_by_the_pids_limit(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="bomb",
                agent="forkbomb",
                settings={"attempts": 2000, "pause": 0.005},
                policy=Policy(max_procs=20, restart="temporary"),
            ),
        )
        assert vsm.pid is not None
        dirs = vsm_cgroups(vsm.pid)
        assert dirs["pids"].name == LEAF and vsm.id == dirs["pids"].parent.name
        assert (dirs["pids"] / "pids.max").read_text().strip() == str(20 + RUNTIME_TASKS)

        def refused() -> dict[str, Any] | None:
            got: dict[str, Any] = c.call(vsm.id, "status", timeout=30)
            return got if got["errors"] else None

        got = poll_for(refused, timeout=60, what="a fork refused by the pids limit")
        ping = d.vsmctl("ping", "--timeout", "10")  # the daemon answers during the bomb
        assert ping.returncode == 0, ping.stderr
        assert set(got["errors"]) == {"EAGAIN"}
        children: list[int] = got["pids"]
        assert 0 < len(children) <= 20 + RUNTIME_TASKS
        assert set(children) <= procs(dirs["pids"])  # born in the VSM's cgroup

        c.terminate_child_vsm(vsm.id)
        for d_ in dirs.values():
            poll_for(partial(is_empty, d_), timeout=60, what=f"{d_} to be empty")
        poll_for(
            lambda: not any(psutil.pid_exists(p) for p in children),
            timeout=60,
            what="every process of the bomb to be gone",
        )


@pytest.mark.usefixtures("usable")
def test_terminate_kills_what_left_the_process_group(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="esc", agent="escaper"))
        helper = c.call(vsm.id, "pids")["helper_pid"]
        assert psutil.Process(helper).pid == helper
        c.terminate_child_vsm(vsm.id)

        poll_for(
            partial(is_dead, helper), timeout=60, what="the helper in its own session to be killed"
        )


@pytest.mark.usefixtures("usable")
def test_a_subtree_budget_caps_the_nested_cgroups(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        c = d.client()
        boss = c.spawn_recursive_vsm(
            None, SpawnConfig(name="boss", policy=Policy(budget_memory_mb=200, memory_mb=50))
        )
        worker = c.spawn_recursive_vsm(
            boss.id, SpawnConfig(name="w", policy=Policy(memory_mb=60, cpu_percent=30))
        )
        assert boss.pid is not None and worker.pid is not None
        mine, below = vsm_cgroups(boss.pid)["memory"], vsm_cgroups(worker.pid)["memory"]
        subtree = mine.parent  # the boss's: its own leaf and its children beside it
        assert below.parent.parent == subtree and below.parent.name == worker.id
        v1 = (subtree / "memory.limit_in_bytes").exists()
        limit = "memory.limit_in_bytes" if v1 else "memory.max"
        assert int((subtree / limit).read_text()) == hard_memory(200)
        assert int((mine / limit).read_text()) == hard_memory(50)
        assert int((below / limit).read_text()) == hard_memory(60)
        cpu = vsm_cgroups(worker.pid)["cpu"]
        quota = (cpu / ("cpu.cfs_quota_us" if v1 else "cpu.max")).read_text().split()[0]
        assert int(quota) == 60_000  # twice 30 % of one core, per 100 ms
        c.terminate_child_vsm(boss.id)
        poll_for(lambda: not subtree.exists(), timeout=60, what="the boss's cgroups to go")


@pytest.mark.usefixtures("usable")
def test_an_oom_kill_in_the_memory_cgroup_is_reported(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config={"sample_interval": 0.5}) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="oom",
                agent="forkhog",
                settings={"children": 8, "mb": 30},  # 240 MiB in all, each under its rlimit
                policy=Policy(memory_mb=50),  # the cgroup holds 2 x 50 + 64 MiB
            ),
        )
        poll_for(lambda: "oom_kill" in kinds(c, vsm.id), timeout=60, what="an oom_kill event")
        reason = c.show(vsm.id).last_reason or ""
        assert reason.startswith("out of memory: the kernel killed "), reason
        assert reason.endswith(" in its memory cgroup"), reason


@pytest.mark.usefixtures("usable")
def test_the_daemon_removes_its_cgroups_and_a_predecessors(broker_url: str, tmp_path: Path) -> None:
    ns = new_namespace()
    found = detect(ns)
    assert isinstance(found, Cgroups)
    for root in found.roots:  # as a daemon killed with -9 leaves them
        (root / "0123456789ab" / LEAF).mkdir(parents=True)
    with running_daemon(broker_url, tmp_path, namespace=ns) as d:
        assert "cgroups: each VSM in its own, cgroup v" in d.log()
        for root in found.roots:
            assert root.is_dir() and not (root / "0123456789ab").exists()
        d.client().spawn_recursive_vsm(None, SpawnConfig(name="x"))
    for root in found.roots:
        poll_for(partial(is_gone, root), timeout=60, what=f"{root} to go")


@pytest.mark.usefixtures("usable")
def test_kill_9_of_vsmd_leaves_no_process_and_no_cgroup(broker_url: str, tmp_path: Path) -> None:
    d = start_daemon(broker_url, tmp_path / "s")
    found = detect(d.namespace)  # the same directories; made again, they are still ours
    assert isinstance(found, Cgroups)
    helper = 0
    try:
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="esc", agent="escaper"))
        helper = c.call(vsm.id, "pids")["helper_pid"]
        c.close()
        d.proc.kill()
        d.proc.wait()
        poll_for(partial(is_dead, helper), timeout=60, what="the helper in its own session")
        for root in found.roots:
            poll_for(partial(is_gone, root), timeout=60, what=f"{root} to go")
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace, ())
        found.stop()
        if helper and not is_dead(helper):  # a failed run leaves nothing running
            os.kill(helper, signal.SIGKILL)


def test_cgroups_off_keeps_vsms_in_the_daemons_cgroup(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config={"cgroups": "off"}) as d:
        assert 'cgroups: off (cgroups = "off")' in d.log()
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="x"))
        assert vsm.pid is not None
        assert "vsmd-" not in Path(f"/proc/{vsm.pid}/cgroup").read_text()
        assert c.ping()["spawn_steps"]["cgroups"]["count"] == 0


@pytest.mark.usefixtures("usable")
def test_each_vsm_joins_its_cgroups_and_the_daemon_times_making_them(
    broker_url: str, tmp_path: Path
) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        c = d.client()
        before = c.ping()["spawn_steps"]["cgroups"]
        vsms = [c.spawn_recursive_vsm(None, SpawnConfig(name=n)) for n in ("a", "b")]
        after = c.ping()["spawn_steps"]["cgroups"]
        assert after["count"] - before["count"] == 2
        assert after["seconds"] > before["seconds"]
        for vsm in vsms:
            assert vsm.pid is not None
            # Joined through each hierarchy's tasks file (cgroup v1) or cgroup.procs (v2):
            # either way the whole process, and only it, is in its own leaf.
            for d_ in vsm_cgroups(vsm.pid).values():
                assert d_.name == LEAF and d_.parent.name == vsm.id
                assert procs(d_) == {vsm.pid}
