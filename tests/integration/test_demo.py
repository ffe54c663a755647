"""`make run`'s demo tree: leaves take readings, parents sum them up, policy flows down."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.support.harness import (
    BIN,
    DaemonProc,
    cleanup_namespace,
    new_namespace,
    poll_for,
    vsm_env,
)
from vsmd.protocol import PolicySet, StateOf


def test_demo_tree_shows_readings_at_the_root_and_obeys_policy(
    broker_url: str, tmp_path: Path
) -> None:
    ns = new_namespace()
    log_path = tmp_path / "vsmd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "vsmd"),
                "run",
                "--broker",
                broker_url,
                "--namespace",
                ns,
                "--state-dir",
                str(tmp_path),
                "--demo",
            ],
            env=vsm_env(ns, broker_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    d = DaemonProc(ns, broker_url, tmp_path, proc, log_path)
    try:
        d.wait_ready()
        c = d.client()
        poll_for(lambda: len(c.list_child_vsms()) == 7, timeout=60, what="7 VSMs of the demo")
        root = next(v for v in c.list_child_vsms() if v.path == "demo")
        leaves = [v for v in c.list_child_vsms() if v.depth == 3]
        assert len(leaves) == 4 and {v.agent for v in leaves} == {"reading"}

        def summary() -> dict[str, Any]:
            sub: dict[str, Any] = c.request(StateOf(id=root.id))["metrics"].get("subtree", {})
            return sub

        first = poll_for(
            lambda: summary() if summary().get("counters", {}).get("readings", 0) >= 4 else None,
            timeout=60,
            what="readings summed up at the root",
        )
        assert first["count"] == 7
        poll_for(
            lambda: summary()["counters"]["readings"] > first["counters"]["readings"],
            timeout=60,
            what="the root's summary to move",
        )
        c.request(PolicySet(id=root.id, values={"x-paused": True}))
        poll_for(
            lambda: summary().get("worst_health") == "degraded",
            timeout=60,
            what="paused leaves to show at the root",
        )
        leaf_state = c.request(StateOf(id=leaves[0].id))
        assert leaf_state["effective_policy"] == {"x-paused": True}
    finally:
        d.stop()
        cleanup_namespace(broker_url, ns)
