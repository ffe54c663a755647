"""Supervision with real processes: restart policies, intensity, escalation, abandon, no orphans,
daemon restart from the journal."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.support.harness import (
    DaemonProc,
    cleanup_namespace,
    poll_for,
    running_daemon,
    start_daemon,
)
from vsmctl.client import VsmClient
from vsmd.errors import NotFound, VsmdError
from vsmd.protocol import Policy, SpawnConfig, VsmInfo

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5, "sample_interval": 0.2}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def new(c: VsmClient, parent: str | None, name: str, **policy: object) -> VsmInfo:
    return c.spawn_recursive_vsm(parent, SpawnConfig(name=name, policy=Policy(**policy)))  # type: ignore[arg-type]


def back_with_new_pid(c: VsmClient, vsm: VsmInfo) -> VsmInfo:
    def check() -> VsmInfo | None:
        info = c.show(vsm.id)
        ok = info.status == "running" and info.pid not in (None, vsm.pid)
        return info if ok else None

    return poll_for(check, what=f"{vsm.path} to come back")


def events_of(c: VsmClient, vsm_id: str) -> list[str]:
    return [e["kind"] for e in c.events()[1] if e["vsm_id"] == vsm_id]


def test_kill_9_at_each_depth_follows_the_restart_policy(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config=FAST) as d:
        c = d.client()
        root = new(c, None, "root", restart="permanent")
        mid = new(c, root.id, "mid", restart="transient")
        leaf = new(c, mid.id, "leaf", restart="temporary")
        for vsm in (root, mid):
            assert vsm.pid is not None
            os.kill(vsm.pid, signal.SIGKILL)
            back = back_with_new_pid(c, vsm)
            assert (back.id, back.path, back.restarts) == (vsm.id, vsm.path, 1)
            assert back.last_exit == "killed by SIGKILL"
        assert leaf.pid is not None
        os.kill(leaf.pid, signal.SIGKILL)
        poll_for(lambda: c.show(leaf.id).status == "failed", what="temporary to stay down")
        info = c.show(leaf.id)
        assert info.restarts == 0 and info.pid is None and "restart policy" not in info.status
        kinds = events_of(c, leaf.id)
        assert "exited" in kinds and "restart_scheduled" not in kinds
        # The rest of the tree was untouched by the leaf's death.
        assert c.show(root.id).status == "running" and c.show(mid.id).status == "running"


def test_transient_stays_down_after_a_clean_exit(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config=FAST) as d:
        c = d.client()
        clean = c.spawn_recursive_vsm(
            None, SpawnConfig(name="clean", agent="crasher", policy=Policy(restart="transient"))
        )
        perm = c.spawn_recursive_vsm(
            None, SpawnConfig(name="perm", agent="crasher", policy=Policy(restart="permanent"))
        )
        for vsm in (clean, perm):
            with pytest.raises(VsmdError):
                c.call(vsm.id, "crash", {"code": 0}, timeout=1.0)
        poll_for(lambda: c.show(clean.id).status == "exited", what="transient exit 0 to stay down")
        assert c.show(clean.id).exit_code == 0 and c.show(clean.id).restarts == 0
        assert back_with_new_pid(c, perm).restarts == 1  # permanent: even after exit 0


def test_intensity_exceeded_fails_and_escalates(broker_url: str, tmp_path: Path) -> None:
    config = {**FAST, "max_restarts": 2, "max_seconds": 60.0}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        parent = new(c, None, "boss", on_child_failure="terminate")
        kid = c.spawn_recursive_vsm(
            parent.id, SpawnConfig(name="flaky", agent="crasher", settings={"after": 0, "code": 3})
        )
        poll_for(lambda: "failed" in events_of(c, kid.id), timeout=30, what="intensity exceeded")
        kinds = events_of(c, kid.id)
        assert kinds.count("restart_scheduled") == 2 and "escalated" in kinds
        # The parent's policy says terminate: its whole subtree is stopped.
        poll_for(lambda: not _exists(c, parent.id), what="the parent's subtree to stop")
        assert any(e["kind"] == "escalated" and e["vsm_id"] == parent.id for e in c.events()[1])


def _exists(c: VsmClient, vsm_id: str) -> bool:
    try:
        c.show(vsm_id)
        return True
    except NotFound:
        return False


def test_terminate_during_backoff_means_no_restart(broker_url: str, tmp_path: Path) -> None:
    config = {"backoff_initial": 2.0, "backoff_max": 2.0}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        vsm = new(c, None, "waiting", restart="permanent")
        assert vsm.pid is not None
        os.kill(vsm.pid, signal.SIGKILL)
        poll_for(lambda: c.show(vsm.id).status == "backoff", what="backoff")
        due = c.show(vsm.id).next_restart
        assert due is not None and due > time.time()
        assert c.terminate_child_vsm(vsm.id) == [vsm.id]
        poll_for(lambda: time.time() > due + 0.5, timeout=10, what="the restart time to pass")
        assert not _exists(c, vsm.id)
        assert "restarted" not in events_of(c, vsm.id)
        assert not any(
            vsm.id in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
        )


def test_abandoned_children_outlive_their_parent(daemon: DaemonProc) -> None:
    c = daemon.client()
    top = new(c, None, "top")
    mid = new(c, top.id, "mid")
    stay = new(c, mid.id, "stay", on_parent_exit="abandon")
    go = new(c, mid.id, "go")
    assert sorted(c.terminate_child_vsm(mid.id)) == sorted([go.id, mid.id])
    info = c.show(stay.id)
    assert info.parent == top.id and info.depth == 2 and info.status == "running"
    assert info.pid == stay.pid and info.path == "top.mid.stay"  # same process, same address
    assert c.show(top.id).children == [stay.id]
    assert go.pid is not None and poll_for(lambda: gone(go.pid or 0), what="the other child")


def test_terminate_kills_the_agents_own_subprocesses(daemon: DaemonProc) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="h", agent="helper"))
    helper = c.call(vsm.id, "pids")["helper_pid"]
    assert psutil.pid_exists(helper)
    c.terminate_child_vsm(vsm.id)
    poll_for(lambda: gone(helper), what="the agent's subprocess to die with its group")


def test_kill_9_of_vsmd_leaves_nothing_and_restart_restores(
    broker_url: str, tmp_path: Path
) -> None:
    d = start_daemon(broker_url, tmp_path / "state")
    ids: list[str] = []  # for the clean-up: a killed daemon leaves its queues behind
    try:
        c = d.client()
        root = new(c, None, "root", restart="permanent")
        kid = new(c, root.id, "kid")  # transient by default
        temp = new(c, root.id, "temp", restart="temporary")
        ids += [root.id, kid.id, temp.id]
        family = psutil.Process(d.proc.pid).children(recursive=True)
        assert len(family) >= 4  # fork server and three VSMs
        c.close()
        d.proc.kill()
        d.proc.wait()
        poll_for(
            lambda: all(gone(p.pid) for p in family),
            timeout=2,
            what="every VSM to die with the daemon",
        )

        again = start_daemon(broker_url, tmp_path / "state", namespace=d.namespace)
        d = again
        c = d.client()
        poll_for(
            lambda: (
                all(v.status == "running" for v in c.list_child_vsms())
                and len(c.list_child_vsms()) == 2
            ),
            what="the restored tree",
        )
        restored = {v.id: v for v in c.list_child_vsms()}
        assert set(restored) == {root.id, kid.id}  # temporary ones are not restored
        assert restored[kid.id].path == "root.kid" and restored[kid.id].parent == root.id
        assert all(v.pid not in (root.pid, kid.pid) for v in restored.values())
        assert temp.id not in restored
        assert any(e["kind"] == "restored" for e in c.events()[1])
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace, tuple(ids))


def test_fork_server_crash_takes_its_vsms_and_they_come_back(daemon: DaemonProc) -> None:
    c = daemon.client()
    keep = new(c, None, "keep", restart="permanent")
    temp = new(c, None, "temp", restart="temporary")
    fork_server = next(
        p
        for p in psutil.Process(daemon.proc.pid).children()
        if "forkserver" in " ".join(p.cmdline())
    )
    fork_server.kill()
    assert keep.pid is not None and temp.pid is not None
    poll_for(
        lambda: gone(keep.pid or 0) and gone(temp.pid or 0),
        what="the VSMs to die with their fork server",
    )
    back = back_with_new_pid(c, keep)
    assert back.last_exit == "killed by SIGKILL"
    assert back.last_reason is not None and "its fork server died" in back.last_reason
    poll_for(lambda: c.show(temp.id).status == "failed", what="the temporary one to stay down")
    # The dead VSMs were re-parented to the daemon (a subreaper) and reaped: no zombies.
    poll_for(
        lambda: (
            not any(
                p.status() == psutil.STATUS_ZOMBIE
                for p in psutil.Process(daemon.proc.pid).children()
            )
        ),
        what="the orphans to be reaped",
    )
    assert c.spawn_recursive_vsm(None, SpawnConfig(name="fresh")).status == "running"


def test_a_crashed_vsm_takes_its_agents_subprocesses_along(daemon: DaemonProc) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(
        None, SpawnConfig(name="h", agent="helper", policy=Policy(restart="temporary"))
    )
    helper = c.call(vsm.id, "pids")["helper_pid"]
    assert vsm.pid is not None and psutil.pid_exists(helper)
    os.kill(vsm.pid, signal.SIGKILL)  # the VSM alone, not its group
    poll_for(lambda: gone(helper), what="the helper to be swept with the VSM's group")
    assert c.show(vsm.id).status == "failed"
