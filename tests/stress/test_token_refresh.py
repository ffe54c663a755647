"""Secure mode over time: a VSM's token expires (token_ttl, 60 s here) and the VSM refreshes it
on its open connection, so it goes on working long past the first token's end. Slow by nature
(the broker caches permissions per channel for up to a minute): a stress test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import DaemonProc, poll_for
from tests.support.secure import start_secure_daemon
from vsmd.protocol import SpawnConfig

pytestmark = pytest.mark.stress
TTL = 60.0


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[DaemonProc]:
    modules = '"tests.support.agents", "tests.support.msg_agents"'
    d = start_secure_daemon(tmp_path, f"agent_modules = [{modules}]\ntoken_ttl = {TTL}")
    try:
        yield d
    finally:
        d.stop()


def test_a_vsm_keeps_working_past_its_first_tokens_end(secure: DaemonProc) -> None:
    c = secure.client()
    parent = c.spawn_recursive_vsm(None, SpawnConfig(name="p", agent="recorder"))
    child = c.spawn_recursive_vsm(parent.id, SpawnConfig(name="c", agent="recorder"))
    started = time.monotonic()
    user = f"vsm-{parent.id}"

    def issued() -> int:
        return secure.log().count(f"token issued to {user}")

    # The first token ends at TTL; the broker's per-channel permission cache may let an
    # expired token go on for up to another minute: past both, only refreshed tokens work.
    poll_for(lambda: time.monotonic() - started > 2 * TTL + 5, 3 * TTL, 1.0, "two token lives")
    assert issued() >= 4  # at start, then every TTL / 2
    answer = c.call(parent.id, "do", {"op": "request", "target": child.id, "kind": "hi"}, 30.0)
    assert answer == {"result": {"me": child.path, "kind": "hi"}}
    c.call(child.id, "do", {"op": "send", "target": "parent", "kind": "late"}, 30.0)

    def heard() -> bool:
        return any(g["kind"] == "late" for g in c.call(parent.id, "log", {}, 10.0)["got"])

    poll_for(heard, 15.0, 0.2, "the child's message at its parent")
    assert (
        "token" not in secure.log().split("refresh", 1)[-1].lower() or "cannot" not in secure.log()
    )
