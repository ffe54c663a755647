"""Partition: one VSM's connection to the broker is cut for 10 s while its process lives on.

Everything reaches the broker through a TCP proxy of the test's own; the proxy closes the VSM's
connection and refuses its reconnects for 10 s. The daemon marks it ``unreachable`` (its inbox
took no probe) and tells its parent; once the VSM is back it is ``running`` again, its state
flows, and nothing was restarted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.harness import DaemonProc, poll_for, running_daemon
from tests.support.tcp_proxy import TcpProxy
from vsmctl.client import VsmClient
from vsmd.errors import VsmdError
from vsmd.protocol import SpawnConfig

AGENTS = ["tests.support.agents", "tests.support.reliability_agents"]
PARTITION = 10.0  # seconds the VSM stays cut off
PROBE_INTERVAL = 1.0


def _status(c: VsmClient, vsm_id: str) -> str:
    return c.show(vsm_id).status


def _notices(c: VsmClient, parent: str, kind: str, child: str) -> bool:
    got = c.call(parent, "log")["got"]
    return any(g["kind"] == kind and g["body"].get("child") == child for g in got)


def _pong(d: DaemonProc, vsm_id: str) -> bool:
    with VsmClient(d.broker_url, d.namespace, 3) as c:
        try:
            return bool(c.ping_vsm(vsm_id, timeout=3)["pong"] == vsm_id)
        except VsmdError:
            return False


def _hold(c: VsmClient, kid: str, other: str, pid: int, until: float) -> int:
    """Until ``until``: the cut-off VSM stays unreachable with the same process, the other VSM
    stays running. Returns how many checks were made."""
    checks = 0
    while time.monotonic() < until:
        info = c.show(kid)
        assert (info.status, info.pid, info.restarts) == ("unreachable", pid, 0)
        assert _status(c, other) == "running"
        checks += 1
        time.sleep(0.5)  # between the checks of a hold with a deadline, as in poll_for
    return checks


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_a_partitioned_vsm_is_unreachable_then_resyncs(broker_url: str, tmp_path: Path) -> None:
    config = {"agent_modules": AGENTS, "probe_interval": PROBE_INTERVAL}
    with (
        TcpProxy(broker_url) as proxy,
        running_daemon(proxy.url, tmp_path / "s", None, config) as d,
    ):
        c = d.client()
        root = c.spawn_recursive_vsm(None, SpawnConfig(name="root", agent="ticker"))
        kid = c.spawn_recursive_vsm(root.id, SpawnConfig(name="kid", agent="ticker"))
        other = c.spawn_recursive_vsm(root.id, SpawnConfig(name="other", agent="ticker"))
        assert kid.pid is not None
        poll_for(lambda: c.state(kid.id)["data"].get("n", 0) > 0, timeout=30, what="kid's state")

        cut_at = time.monotonic()
        assert proxy.cut(kid.pid) == 1  # its one connection
        poll_for(lambda: _status(c, kid.id) == "unreachable", timeout=30, what="unreachable")
        detected = time.monotonic() - cut_at
        listing = d.vsmctl("list")
        assert any(kid.id in line and "unreachable" in line for line in listing.stdout.splitlines())
        poll_for(
            lambda: _notices(c, root.id, "child_unreachable", kid.id),
            timeout=30,
            what="the parent to hear of it",
        )
        _hold(c, kid.id, other.id, kid.pid, cut_at + PARTITION)
        n_cut = c.state(kid.id)["data"]["n"]  # the daemon's view froze with the cut

        proxy.heal(kid.pid)
        healed = time.monotonic()
        poll_for(lambda: _status(c, kid.id) == "running", timeout=60, what="reachable again")
        back = time.monotonic() - healed
        assert _pong(d, kid.id)
        poll_for(
            lambda: _notices(c, root.id, "child_reachable", kid.id),
            timeout=30,
            what="the parent to hear it is back",
        )
        # Its state flows again: the ticks it made while cut off arrive, then new ones.
        poll_for(
            lambda: c.state(kid.id)["data"]["n"] > n_cut + PARTITION / 2,
            timeout=30,
            what="kid's state to flow again",
        )
        flowing = time.monotonic() - healed
        c.call(kid.id, "pause")
        poll_for(
            lambda: c.state(kid.id)["data"] == c.call(kid.id, "show")["data"],
            timeout=30,
            what="the daemon's view of kid to equal its own",
        )
        for v in (root, kid, other):
            info = c.show(v.id)
            assert (info.status, info.pid, info.restarts) == ("running", v.pid, 0)
        kinds = [e["kind"] for e in c.events()[1] if e.get("vsm_id") == kid.id]
        assert kinds.count("unreachable") == 1 and kinds.count("reachable") == 1
        print(
            f"\npartition: cut {PARTITION:g} s (reconnects refused: {proxy.refused}); "
            f"unreachable after {detected:.1f} s (probe every {PROBE_INTERVAL:g} s); running "
            f"again {back:.1f} s after the heal; state flowing {flowing:.1f} s after the heal; "
            "restarts 0, same pids"
        )
