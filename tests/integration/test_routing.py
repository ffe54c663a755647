"""Routing on ``<ns>.recursive``: every kind of target reaches exactly whom it should.

The tree (depth 4), every VSM a recorder:

    r ── a ── b ── c
    │    │    └─── c2
    │    └─── b2
    └─── a2 ── x

plus a VSM ``o`` of another daemon in another namespace, which must never hear anything.
A VSM that must not get a message is asked for its log after the ones that must have it have
it: the request queues behind anything already routed to its inbox.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmctl.client import VsmClient
from vsmd.errors import VsmdError
from vsmd.protocol import Policy, SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}
NAMES = ("r", "a", "b", "c", "c2", "b2", "a2", "x")
PARENTS = {"a": "r", "b": "a", "c": "b", "c2": "b", "b2": "a", "a2": "r", "x": "a2"}


@dataclass
class World:
    d: DaemonProc
    c: VsmClient
    ids: dict[str, str]
    other: VsmClient
    other_id: str

    def do(self, name: str, **cmd: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.c.call(self.ids[name], "do", cmd, timeout=60)
        return answer

    def got(self, name: str, kind: str) -> list[dict[str, Any]]:
        log = self.c.call(self.ids[name], "log", timeout=30)["got"]
        return [m for m in log if m["kind"] == kind]

    def receivers(self, kind: str, expected: set[str]) -> set[str]:
        """Wait until every expected VSM has ``kind``; then who has it, all told."""
        for name in sorted(expected):

            def has_it(name: str = name) -> bool:
                return bool(self.got(name, kind))

            poll_for(has_it, timeout=30, what=f"{name} to get {kind}")
        have = {n for n in NAMES if self.got(n, kind)}
        other = self.other.call(self.other_id, "log", timeout=30)["got"]
        assert not [m for m in other if m["kind"] == kind], "another namespace heard it"
        return have


@pytest.fixture(scope="module")
def world(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("routing")
    with (
        running_daemon(broker_url, base / "main", config=AGENTS) as d,
        running_daemon(broker_url, base / "other", config=AGENTS) as o,
    ):
        c = d.client()
        ids: dict[str, str] = {}
        for name in NAMES:
            parent = ids[PARENTS[name]] if name in PARENTS else None
            cfg = SpawnConfig(name=name, agent="recorder")
            ids[name] = c.spawn_recursive_vsm(parent, cfg).id
        other = o.client()
        # Same name, same place: only the namespace tells them apart.
        other_id = other.spawn_recursive_vsm(None, SpawnConfig(name="r", agent="recorder")).id
        yield World(d, c, ids, other, other_id)


def test_direct_by_id_and_by_path(world: World) -> None:
    assert world.do("a", op="send", target=world.ids["c"], kind="by-id") == {"result": None}
    assert world.receivers("by-id", {"c"}) == {"c"}
    assert world.do("r", op="send", target="r.a.b.c2", kind="by-path") == {"result": None}
    assert world.receivers("by-path", {"c2"}) == {"c2"}
    [entry] = world.got("c2", "by-path")
    assert (entry["sender"], entry["path"]) == (world.ids["r"], "r")


def test_upward_reaches_the_parent_only(world: World) -> None:
    assert world.do("c", op="send", target="parent", kind="up", body={"n": 1}) == {"result": None}
    assert world.receivers("up", {"b"}) == {"b"}
    [entry] = world.got("b", "up")
    assert entry == {"kind": "up", "body": {"n": 1}, "sender": world.ids["c"], "path": "r.a.b.c"}


def test_a_root_has_no_parent_vsm(world: World) -> None:
    answer = world.do("r", op="send", target="parent", kind="nowhere")
    assert answer["error"] == "UNREACHABLE"
    assert "top level" in answer["message"]


def test_broadcast_to_children(world: World) -> None:
    world.do("a", op="broadcast", kind="kids", depth=1)
    assert world.receivers("kids", {"b", "b2"}) == {"b", "b2"}


def test_broadcast_to_the_subtree(world: World) -> None:
    world.do("a", op="broadcast", kind="sub")
    assert world.receivers("sub", {"b", "b2", "c", "c2"}) == {"b", "b2", "c", "c2"}


def test_broadcast_down_a_number_of_levels(world: World) -> None:
    world.do("r", op="broadcast", kind="two", depth=2)
    assert world.receivers("two", {"a", "a2", "b", "b2", "x"}) == {"a", "a2", "b", "b2", "x"}


def test_alert_reaches_the_root_and_the_daemon_only(world: World) -> None:
    world.do("c", op="alert", severity="critical", text="pain", body={"t": 99})
    assert world.receivers("alert", {"r"}) == {"r"}
    [entry] = world.got("r", "alert")
    assert entry["sender"] == world.ids["c"]
    assert entry["body"] == {"severity": "critical", "text": "pain", "data": {"t": 99}}

    def alert_event() -> dict[str, Any] | None:
        _, events = world.c.events()
        return next((e for e in events if e["kind"] == "alert"), None)

    event = poll_for(alert_event, timeout=30, what="an alert event")
    assert event["path"] == "r.a.b.c"
    assert event["details"]["severity"] == "critical"
    assert "pain" in event["message"]


def test_request_and_reply(world: World) -> None:
    answer = world.do("a", op="request", target=world.ids["c"], kind="q", body={"x": 1})
    assert answer == {"result": {"me": "r.a.b.c", "kind": "q"}}
    answer = world.do("c", op="request", target="parent", kind="q2")
    assert answer == {"result": {"me": "r.a.b", "kind": "q2"}}


def test_request_to_an_unknown_vsm_fails_fast(world: World) -> None:
    answer = world.do("a", op="request", target="0123456789ab", kind="q", timeout=60)
    assert answer["error"] == "UNREACHABLE"  # not TIMEOUT: the broker returned it at once
    answer = world.do("a", op="send", target="r.a.nobody", kind="q")
    assert answer["error"] == "UNREACHABLE"


def test_a_vsm_whose_calls_channel_the_broker_closes_reconnects_and_calls_again(
    world: World,
) -> None:
    assert world.do("a", op="request", target=world.ids["b"], kind="q")["result"]["me"] == "r.a.b"
    # Its answer goes out on the channel the broker is closing: it may be lost with it.
    with contextlib.suppress(VsmdError):
        world.do("a", op="break_calls")

    def answered() -> bool:
        try:  # a's own inbox is gone for a moment while it reconnects
            answer = world.do("a", op="request", target=world.ids["b"], kind="q", timeout=2.0)
        except VsmdError:
            return False
        return bool(answer.get("result", {}).get("me") == "r.a.b")

    # Without the VSM hearing the close, every later call fails on the dead channel.
    poll_for(answered, timeout=30, what="a's requests to work again")


def test_request_to_a_vsm_that_dies_meanwhile(world: World) -> None:
    victim = world.c.spawn_recursive_vsm(
        world.ids["b"],
        SpawnConfig(name="victim", agent="blocker", policy=Policy(restart="temporary")),
    )
    assert victim.pid is not None
    proc = psutil.Process(victim.pid)
    result: dict[str, Any] = {}

    def ask() -> None:
        # b asks the victim for something slow; pika connections are per thread.
        with VsmClient(world.d.broker_url, world.d.namespace, 180) as own:
            cmd = {"op": "request", "target": victim.id, "kind": "block", "timeout": 120}
            result.update(own.call(world.ids["b"], "do", {**cmd, "body": {"seconds": 60}}))

    worker = threading.Thread(target=ask)
    worker.start()
    # The plain agent's worker thread exists once the victim runs its handler.
    poll_for(lambda: proc.num_threads() > 1, timeout=30, what="the victim to be busy")
    proc.send_signal(signal.SIGKILL)
    worker.join(150)
    assert not worker.is_alive()
    assert result["error"] == "UNREACHABLE"  # not TIMEOUT after 120 s
    assert "went down" in result["message"]


def test_an_abandoned_vsm_is_bound_in_its_new_place(world: World) -> None:
    c = world.c
    p = c.spawn_recursive_vsm(None, SpawnConfig(name="p", agent="recorder")).id
    m = c.spawn_recursive_vsm(p, SpawnConfig(name="m", agent="recorder")).id
    k = c.spawn_recursive_vsm(
        m, SpawnConfig(name="k", agent="recorder", policy=Policy(on_parent_exit="abandon"))
    ).id
    c.terminate_child_vsm(m)
    assert c.show(k).parent == p
    world.ids.update(p=p, k=k)
    try:
        # It applies the move on its own: its new bindings are in place once it says so.
        def moved() -> bool:
            pong = c.ping_vsm(k, 10.0)
            return pong["parent"] == p and pong["moving"] is False

        poll_for(moved, timeout=30, what="k to apply its move")
        # k sent its whole state up: p's subtree summary counts it (and no longer m).
        poll_for(
            lambda: c.state(p)["metrics"].get("subtree", {}).get("count") == 2,
            timeout=30,
            what="p's subtree summary to count k",
        )
        # Its new parent's broadcast to its children reaches it, and its "parent" is p now.
        c.call(p, "do", {"op": "broadcast", "kind": "adopted", "depth": 1}, timeout=30)
        poll_for(lambda: world.got("k", "adopted"), timeout=30, what="k to hear its new parent")
        answer = c.call(k, "do", {"op": "request", "target": "parent", "kind": "hi"}, timeout=30)
        assert answer == {"result": {"me": "p", "kind": "hi"}}
    finally:
        c.terminate_child_vsm(p)


def test_a_restarted_vsm_is_bound_again(world: World) -> None:
    c = world.c
    info = c.spawn_recursive_vsm(
        world.ids["a2"],
        SpawnConfig(name="phoenix", agent="recorder", policy=Policy(restart="permanent")),
    )
    assert info.pid is not None
    psutil.Process(info.pid).send_signal(signal.SIGKILL)

    def back() -> bool:
        now = c.show(info.id)
        return now.status == "running" and now.pid not in (None, info.pid)

    poll_for(back, timeout=60, what="the VSM to be restarted")
    answer = world.do("a2", op="request", target=info.id, kind="again")
    assert answer == {"result": {"me": "r.a2.phoenix", "kind": "again"}}
    world.do("a2", op="broadcast", kind="after-restart", depth=1)
    got = poll_for(
        lambda: [m for m in c.call(info.id, "log")["got"] if m["kind"] == "after-restart"],
        timeout=30,
        what="the restarted VSM to get its parent's broadcast",
    )
    assert len(got) == 1
    c.terminate_child_vsm(info.id)
