"""The backbone as a user meets it: real daemon, real broker, real processes, vsmctl as a CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.support.harness import DaemonProc, poll_for, queue_exists, running_daemon
from vsmd.bus.topology import Topology
from vsmd.errors import NotFound, QuotaExceeded


def spawn(d: DaemonProc, *args: str) -> str:
    res = d.vsmctl("spawn", "-q", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def listing(d: DaemonProc) -> dict[str, dict[str, object]]:
    res = d.vsmctl("list", "--json")
    assert res.returncode == 0, res.stderr
    return {v["id"]: v for v in json.loads(res.stdout)}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_three_level_tree_and_terminate_middle(daemon: DaemonProc) -> None:
    root = spawn(daemon, "--name", "root")
    mid = spawn(daemon, "--parent", root, "--name", "a")
    leaf = spawn(daemon, "--parent", mid, "--name", "b")
    side = spawn(daemon, "--parent", root, "--name", "c")

    vsms = listing(daemon)
    assert set(vsms) == {root, mid, leaf, side}
    assert [vsms[i]["parent"] for i in (root, mid, leaf, side)] == [None, root, mid, root]
    assert [vsms[i]["depth"] for i in (root, mid, leaf, side)] == [1, 2, 3, 2]
    assert vsms[leaf]["path"] == "root.a.b"
    assert all(v["status"] == "running" for v in vsms.values())
    pids = {i: int(str(v["pid"])) for i, v in vsms.items()}
    for vsm_id, pid in pids.items():
        proc = psutil.Process(pid)
        assert os.getpgid(pid) == pid  # its own process group
        assert vsm_id in " ".join(proc.cmdline())  # the process title names its id

    res = daemon.vsmctl("terminate", mid, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["terminated"] == [leaf, mid]  # leaves first

    vsms = listing(daemon)
    assert set(vsms) == {root, side}
    assert vsms[root]["children"] == [side]
    poll_for(lambda: gone(pids[mid]) and gone(pids[leaf]), what="subtree processes to go")
    assert not gone(pids[root]) and not gone(pids[side])
    topo = Topology(daemon.namespace)
    assert not queue_exists(daemon.broker_url, topo.inbox(mid))
    assert not queue_exists(daemon.broker_url, topo.inbox(leaf))
    assert queue_exists(daemon.broker_url, topo.inbox(side))


def test_list_tree_and_show(daemon: DaemonProc) -> None:
    root = spawn(daemon, "--name", "top", "--set", "goal=watch", "--set", "n=3")
    spawn(daemon, "--parent", root, "--name", "kid")
    tree = daemon.vsmctl("list", "--tree")
    assert tree.returncode == 0, tree.stderr
    assert "top" in tree.stdout and "kid" in tree.stdout
    show = daemon.vsmctl("show", root, "--json")
    info = json.loads(show.stdout)
    assert info["config"] == {"goal": "watch", "n": 3}
    assert info["status"] == "running" and info["restarts"] == 0


def test_child_spawns_its_own_child_over_the_bus(daemon: DaemonProc) -> None:
    parent = spawn(
        daemon,
        "--name",
        "p",
        "--agent",
        "spawner",
        "--set",
        'children=["x", "y"]',
        "--set",
        "child_agent=spawner",
        "--set",
        'child_config={"children": ["z"]}',
        "--set",
        'child_policy={"restart": "permanent", "memory_mb": 300}',
    )

    def grown() -> dict[str, dict[str, object]] | None:
        vsms = listing(daemon)
        running = [v for v in vsms.values() if v["status"] == "running"]
        return vsms if len(running) == 5 else None

    vsms = poll_for(grown, what="the spawner to grow its subtree")
    paths = sorted(str(v["path"]) for v in vsms.values())
    assert paths == ["p", "p.x", "p.x.z", "p.y", "p.y.z"]
    by_path = {v["path"]: v for v in vsms.values()}
    assert by_path["p.x"]["parent"] == parent
    assert by_path["p.x.z"]["depth"] == 3
    assert by_path["p.x"]["policy"] == {"restart": "permanent", "memory_mb": 300}  # from its agent
    assert by_path["p.x.z"]["policy"] == {}  # the agent of p.x asked for none


def test_vsm_answers_on_its_own_inbox(daemon: DaemonProc) -> None:
    vsm = spawn(daemon, "--name", "echo")
    c = daemon.client()
    pong = c.ping_vsm(vsm)
    assert pong["pong"] == vsm and pong["path"] == "echo"
    assert pong["entry"] == "forkserver.py"  # forked from the pre-imported fork server
    assert c.call(vsm, "hello", {"x": 1}) == {"echo": {"x": 1}, "kind": "hello"}


def test_refusals_have_codes_and_exit_1(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config={"max_total": 3, "max_depth": 2}) as d:
        a = spawn(d, "--name", "a")
        b = spawn(d, "--parent", a, "--name", "b")
        deep = d.vsmctl("spawn", "--parent", b)
        assert deep.returncode == 1
        assert "QUOTA_EXCEEDED" in deep.stderr and "max_depth" in deep.stderr
        dup = d.vsmctl("spawn", "--parent", a, "--name", "b")
        assert dup.returncode == 1 and "CONFLICT" in dup.stderr
        agent = d.vsmctl("spawn", "--agent", "nosuchagent")
        assert agent.returncode == 1 and "unknown agent type" in agent.stderr
        spawn(d, "--name", "c")
        with pytest.raises(QuotaExceeded) as info:
            d.client().spawn_recursive_vsm(None)
        assert info.value.details["limit"] == "max_total"
        unknown = d.vsmctl("terminate", "nosuchvsm")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        assert len(listing(d)) == 3


def test_crash_is_seen_at_once(daemon: DaemonProc) -> None:
    vsm = spawn(daemon, "--agent", "crasher", "--restart", "temporary")
    c = daemon.client()
    pid = c.show(vsm).pid
    assert pid is not None
    with pytest.raises(Exception):  # noqa: B017 - the VSM dies before it can answer
        c.call(vsm, "crash", {"code": 7}, timeout=1.0)
    poll_for(lambda: c.show(vsm).status == "failed", what="failed status")
    info = c.show(vsm)
    assert info.exit_code == 7 and info.last_exit == "exit code 7"
    assert info.pid is None
    c.terminate_child_vsm(vsm)
    with pytest.raises(NotFound):
        c.show(vsm)


def test_sigterm_stops_tree_and_exits_zero(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        root = spawn(d, "--name", "r", "--agent", "helper")
        spawn(d, "--parent", root, "--agent", "helper")
        spawn(d, "--parent", root, "--agent", "tree", "--set", "fanout=2", "--set", "levels=1")
        poll_for(lambda: len(listing(d)) == 5, what="the tree")
        daemon_proc = psutil.Process(d.proc.pid)
        family = daemon_proc.children(recursive=True)
        assert len(family) >= 1 + 5 + 2  # fork server, VSMs, helpers
        helper_pid = d.client().call(root, "pids")["helper_pid"]
        assert any(p.pid == helper_pid for p in family)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0
        poll_for(lambda: all(gone(p.pid) for p in family), timeout=5, what="every process to go")
        assert "vsmd stopped" in d.log()


def test_exec_strategy_spawns_and_terminates(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config={"spawn_strategy": "exec"}) as d:
        root = spawn(d, "--name", "fresh")
        kid = spawn(d, "--parent", root)
        pid = d.client().show(kid).pid
        assert pid is not None
        assert d.client().ping_vsm(kid)["entry"] == "runtime.py"  # a fresh interpreter
        assert d.vsmctl("terminate", root).returncode == 0
        poll_for(lambda: gone(pid), what="the exec'd VSM to go")
