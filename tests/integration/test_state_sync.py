"""State up and down a 3-level tree (r -> m -> g), through crashes of a VSM and of vsmd."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

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
from vsmd.errors import VsmdError
from vsmd.protocol import PolicySet, PolicyShow, SpawnConfig, StateOf

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}


def do(c: VsmClient, vsm_id: str, **cmd: Any) -> Any:
    answer = c.call(vsm_id, "do", cmd, timeout=60)
    assert "error" not in answer, answer
    return answer["result"]


def tree(c: VsmClient) -> dict[str, str]:
    r = c.spawn_recursive_vsm(None, SpawnConfig(name="r", agent="recorder")).id
    m = c.spawn_recursive_vsm(r, SpawnConfig(name="m", agent="recorder")).id
    g = c.spawn_recursive_vsm(m, SpawnConfig(name="g", agent="recorder")).id
    return {"r": r, "m": m, "g": g}


def state(c: VsmClient, vsm_id: str) -> dict[str, Any]:
    result: dict[str, Any] = c.request(StateOf(id=vsm_id))
    return result


def restarted(c: VsmClient, vsm_id: str, old_pid: int | None) -> bool:
    info = c.show(vsm_id)
    return info.status == "running" and info.pid not in (None, old_pid)


def test_updates_go_up_and_policy_comes_down(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config=AGENTS) as d:
        c = d.client()
        ids = tree(c)
        do(c, ids["g"], op="state_set", data={"reading": 21.5}, counts={"hits": 3})
        do(c, ids["m"], op="state_set", counts={"hits": 1}, health="degraded")

        def root_summary() -> dict[str, Any] | None:
            sub = state(c, ids["r"])["metrics"].get("subtree") or {}
            return sub if sub.get("counters", {}).get("hits") == 4 else None

        summary = poll_for(root_summary, timeout=30, what="the grandchild's count at the root")
        assert summary == {"count": 3, "worst_health": "degraded", "counters": {"hits": 4}}
        # The daemon's replica and the parent's replica both have the grandchild's data.
        assert state(c, ids["g"])["data"] == {"reading": 21.5}
        shown = do(c, ids["m"], op="state_show")
        assert shown["children"][ids["g"]]["data"] == {"reading": 21.5}
        assert state(c, ids["g"])["identity"]["path"] == "r.m.g"

        c.request(PolicySet(id=ids["r"], values={"x-mode": "safe", "max_children": 5}))

        def grandchild_policy() -> dict[str, Any] | None:
            policy: dict[str, Any] = do(c, ids["g"], op="state_show")["policy"]
            return policy if policy.get("x-mode") == "safe" else None

        assert poll_for(grandchild_policy, timeout=30, what="policy at the grandchild") == {
            "x-mode": "safe",
            "max_children": 5,
        }
        # A descendant tightens, never loosens.
        do(c, ids["g"], op="state_set", policy={"max_children": 9, "x-mode": "loose"})
        assert do(c, ids["g"], op="state_show")["policy"] == {"x-mode": "safe", "max_children": 5}
        do(c, ids["g"], op="state_set", policy={"max_children": 2})
        assert do(c, ids["g"], op="state_show")["policy"]["max_children"] == 2

        def daemon_view() -> dict[str, Any] | None:
            shown: dict[str, Any] = c.request(PolicyShow(id=ids["g"]))
            return shown if shown["own"].get("max_children") == 2 else None

        shown = poll_for(daemon_view, timeout=30, what="g's own policy at the daemon")
        assert [layer["path"] for layer in shown["layers"]] == ["r", "r.m", "r.m.g"]
        assert shown["effective"] == {"x-mode": "safe", "max_children": 2}


def test_the_daemon_enforces_policy_limits(daemon_with_agents: DaemonProc) -> None:
    c = daemon_with_agents.client()
    ids = tree(c)
    c.request(PolicySet(id=ids["m"], values={"max_children": 1}))
    with pytest.raises(VsmdError) as refused:
        c.spawn_recursive_vsm(ids["m"], SpawnConfig(name="second"))
    assert refused.value.code == "QUOTA_EXCEEDED"
    assert refused.value.details["limit"] == "max_children"
    c.request(PolicySet(id=ids["r"], values={"max_depth_below": 2}))
    with pytest.raises(VsmdError) as deep:
        c.spawn_recursive_vsm(ids["g"], SpawnConfig(name="too-deep"))
    assert deep.value.details["limit"] == "max_depth_below"
    # null deletes a key: the limits are gone again.
    c.request(PolicySet(id=ids["m"], values={"max_children": None}))
    c.request(PolicySet(id=ids["r"], values={"max_depth_below": None}))
    c.spawn_recursive_vsm(ids["m"], SpawnConfig(name="second"))
    c.spawn_recursive_vsm(ids["g"], SpawnConfig(name="deeper"))
    for bad in ({"nonsense": 1}, {"max_children": -1}, {"memory_mb": "lots"}, {}):
        with pytest.raises(VsmdError) as err:
            c.request(PolicySet(id=ids["r"], values=bad))
        assert err.value.code == "BAD_REQUEST", bad
    with pytest.raises(VsmdError) as missing:
        c.request(StateOf(id="nosuchvsm"))
    assert missing.value.code == "NOT_FOUND"


@pytest.fixture
def daemon_with_agents(broker_url: str, tmp_path: Path) -> Any:
    with running_daemon(broker_url, tmp_path, config=AGENTS) as d:
        yield d


def test_state_survives_a_crash_of_the_vsm_and_of_vsmd(broker_url: str, tmp_path: Path) -> None:
    d = start_daemon(broker_url, tmp_path, config=AGENTS)
    try:
        c = d.client()
        ids = tree(c)
        c.request(PolicySet(id=ids["r"], values={"x-mode": "safe"}))
        do(c, ids["m"], op="state_set", data={"kept": [1, "two"]}, flush=True)
        do(c, ids["g"], op="state_set", data={"deep": {"a": 1}}, flush=True)
        old = c.show(ids["m"]).pid
        assert old is not None
        psutil.Process(old).send_signal(signal.SIGKILL)
        poll_for(lambda: restarted(c, ids["m"], old), timeout=60, what="m to be restarted")
        shown = do(c, ids["m"], op="state_show")
        assert shown["data"] == {"kept": [1, "two"]}
        assert shown["policy"] == {"x-mode": "safe"}
        # kill -9 of vsmd: the tree dies with it; a new vsmd restores it, states included.
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(30)
        d.stop()
        d = start_daemon(broker_url, tmp_path, namespace=d.namespace, config=AGENTS)
        c = d.client()
        # Restored VSMs start at once, each on its own: one running says nothing of the others.
        everyone = [ids[name] for name in ("r", "m", "g")]
        poll_for(
            lambda: all(c.show(v).status == "running" for v in everyone),
            timeout=60,
            what="r, m and g restored",
        )
        assert do(c, ids["g"], op="state_show")["data"] == {"deep": {"a": 1}}
        assert do(c, ids["g"], op="state_show")["policy"] == {"x-mode": "safe"}
        assert do(c, ids["m"], op="state_show")["data"] == {"kept": [1, "two"]}
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace)
