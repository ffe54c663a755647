"""Resource governance with real processes: quotas (soft and hard), budgets, throttling,
fork-bomb containment and the event stream."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import BIN, DaemonProc, poll_for, running_daemon, vsm_env
from vsmctl.client import VsmClient
from vsmd.errors import NotFound, QuotaExceeded, Throttled
from vsmd.protocol import Policy, SpawnConfig


def kinds(c: VsmClient, vsm_id: str | None = None) -> list[str]:
    return [e["kind"] for e in c.events()[1] if vsm_id is None or e["vsm_id"] == vsm_id]


def test_memory_quota_acts_after_consecutive_samples(broker_url: str, tmp_path: Path) -> None:
    config = {"sample_interval": 0.2, "quota_violations": 3}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        warned = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="warned",
                agent="memhog",
                settings={"mb": 60},
                policy=Policy(memory_mb=40, quota_action="warn"),
            ),
        )
        stopped = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="stopped",
                agent="memhog",
                settings={"mb": 60},
                policy=Policy(memory_mb=40, quota_action="terminate"),
            ),
        )
        poll_for(lambda: "quota_terminate" in kinds(c, stopped.id), what="terminate action")
        poll_for(lambda: not _exists(c, stopped.id), what="the terminated VSM to go")
        poll_for(lambda: "quota_warn" in kinds(c, warned.id), what="a warning")
        info = c.show(warned.id)
        assert info.status == "running"  # warn only tells
        assert info.last_reason is not None
        assert info.last_reason.startswith("memory quota exceeded: ")
        assert info.last_reason.endswith(" MiB > 40 MiB for 3 samples")
        assert info.metrics["rss_mb"] > 40
        listed = d.vsmctl("list", "--json")
        assert json.loads(listed.stdout)[0]["metrics"]["rss_mb"] > 40


def test_cpu_quota_is_seen_by_the_sampler(broker_url: str, tmp_path: Path) -> None:
    config = {"sample_interval": 0.5, "quota_violations": 2}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        busy = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="busy", agent="spinner", policy=Policy(cpu_percent=20, quota_action="warn")
            ),
        )
        poll_for(lambda: "quota_warn" in kinds(c, busy.id), timeout=30, what="a cpu warning")
        reason = c.show(busy.id).last_reason or ""
        assert reason.startswith("cpu quota exceeded: ") and reason.endswith(
            "% > 20% for 2 samples"
        )


def test_restart_action_brings_the_vsm_back(broker_url: str, tmp_path: Path) -> None:
    config = {"sample_interval": 0.2, "quota_violations": 2, "backoff_initial": 0.05}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="hog",
                agent="memhog",
                settings={"mb": 60},
                policy=Policy(memory_mb=40, quota_action="restart", restart="temporary"),
            ),
        )
        poll_for(lambda: c.show(vsm.id).restarts >= 1, what="a quota restart")
        assert "quota_restart" in kinds(c, vsm.id)


def test_hard_memory_limit_fails_clearly(daemon: DaemonProc) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(
        None,
        SpawnConfig(
            name="greedy",
            agent="memhog",
            settings={"mb": 0, "grow_mb": 400},
            policy=Policy(memory_mb=50, restart="temporary"),
        ),
    )
    poll_for(lambda: c.show(vsm.id).status == "failed", what="the rlimit to stop it")
    info = c.show(vsm.id)
    assert info.exit_code == 4  # the runtime's "agent failed" code
    assert info.last_reason is not None and "MemoryError" in info.last_reason


def _exists(c: VsmClient, vsm_id: str) -> bool:
    try:
        c.show(vsm_id)
        return True
    except NotFound:
        return False


def test_budgets_are_carved_and_returned(daemon: DaemonProc) -> None:
    c = daemon.client()
    boss = c.spawn_recursive_vsm(
        None, SpawnConfig(name="boss", policy=Policy(budget_descendants=3))
    )
    team = c.spawn_recursive_vsm(
        boss.id, SpawnConfig(name="team", policy=Policy(budget_descendants=1))
    )  # holds 2 of the boss's 3
    c.spawn_recursive_vsm(team.id, SpawnConfig(name="worker"))
    with pytest.raises(QuotaExceeded) as refused:
        c.spawn_recursive_vsm(team.id, SpawnConfig(name="extra"))
    assert refused.value.details["limit"] == "budget_descendants"
    assert (
        refused.value.details["used"],
        refused.value.details["asked"],
        refused.value.details["max"],
    ) == (1, 1, 1)
    solo = c.spawn_recursive_vsm(boss.id, SpawnConfig(name="solo"))
    res = daemon.vsmctl("spawn", "--parent", boss.id)
    assert (
        res.returncode == 1
        and "QUOTA_EXCEEDED" in res.stderr
        and "3 used + 1 asked > 3" in res.stderr
    )
    c.terminate_child_vsm(solo.id)  # returns its share
    assert c.spawn_recursive_vsm(boss.id, SpawnConfig(name="again")).status == "running"


def test_spawn_rate_is_throttled_with_retry_after(broker_url: str, tmp_path: Path) -> None:
    config = {"parent_spawn_rate": 2.0, "parent_spawn_burst": 2}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        parent = c.spawn_recursive_vsm(None, SpawnConfig(name="p"))
        c.spawn_recursive_vsm(parent.id)
        c.spawn_recursive_vsm(parent.id)
        with pytest.raises(Throttled) as refused:
            c.spawn_recursive_vsm(parent.id)
        assert 0 < refused.value.retry_after <= 0.5
        assert "throttled" in kinds(c)
        res = d.vsmctl("spawn", "--parent", parent.id, "--wait-throttle", "-q")
        assert res.returncode == 0, res.stderr
        assert len(c.show(parent.id).children) == 3


def test_fork_bomb_is_held_to_its_limits(broker_url: str, tmp_path: Path) -> None:
    config = {"parent_spawn_rate": 5.0, "parent_spawn_burst": 5}
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        bomb = c.spawn_recursive_vsm(
            None,
            SpawnConfig(
                name="bomb",
                agent="bomber",
                settings={"burst": 10},
                policy=Policy(max_children=8),
            ),
        )

        def refused_both() -> dict[str, object] | None:
            stats: dict[str, object] = c.call(bomb.id, "stats", timeout=10)
            refused = stats["refused"]
            assert isinstance(refused, dict)
            limits_hit = {"THROTTLED", "QUOTA_EXCEEDED"} <= set(refused)
            return stats if limits_hit and stats["spawned"] == 8 else None

        for _ in range(3):  # the daemon keeps answering the operator throughout
            ping = d.vsmctl("ping", "--timeout", "10")
            assert ping.returncode == 0, ping.stderr
        stats = poll_for(refused_both, timeout=30, what="the bomb to hit both limits")
        assert stats["spawned"] == 8
        assert len(c.show(bomb.id).children) == 8
        assert len(c.list_child_vsms()) == 9


def test_events_command_and_follow(daemon: DaemonProc) -> None:
    c = daemon.client()
    follower = subprocess.Popen(
        [str(BIN / "vsmctl"), "events", "--follow", "--json"],
        env=vsm_env(daemon.namespace, daemon.broker_url),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        vsm = c.spawn_recursive_vsm(
            None, SpawnConfig(name="short", agent="crasher", policy=Policy(restart="temporary"))
        )
        with pytest.raises(Exception):  # noqa: B017 - it dies before answering
            c.call(vsm.id, "crash", {"code": 9}, timeout=1.0)
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:
            event = json.loads(line)
            seen.append(event["kind"])
            if event["kind"] == "exited" and event["vsm_id"] == vsm.id:
                break
        assert "exit code 9" in event["message"]
    finally:
        follower.terminate()
        follower.communicate(timeout=10)
    listed = daemon.vsmctl("events", "--json")
    assert listed.returncode == 0
    assert any(json.loads(line)["kind"] == "exited" for line in listed.stdout.splitlines())
