"""vsmctl send and broadcast against a real daemon and real VSMs.

The tree, every VSM a ``msglog`` (it records what reaches it):

    r ── a ── b ── c
    └─── a2

A VSM that must not get a message is asked for its log after the ones that must have it have
it: the request queues behind anything already routed to its inbox (the CLI returns only once
the broker confirmed the publish).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from tests.support.harness import BIN, DaemonProc, poll_for, running_daemon
from vsmctl.client import VsmClient
from vsmd.errors import NotFound, ProtocolError, Unreachable
from vsmd.protocol import Policy, SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.vsmctl_agents"]}
NAMES = ("r", "a", "a2", "b", "c")
PARENTS = {"a": "r", "a2": "r", "b": "a", "c": "b"}


@dataclass
class Tree:
    d: DaemonProc
    c: VsmClient
    ids: dict[str, str]

    def log(self, vsm_id: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.c.call(vsm_id, "log", timeout=30)["got"]
        return got

    def got(self, name: str, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.log(self.ids[name]) if m["kind"] == kind]

    def receivers(self, kind: str, expected: set[str]) -> set[str]:
        """Wait until every expected VSM has ``kind``; then who has it, all told."""
        for name in sorted(expected):
            poll_for(partial(self.got, name, kind), timeout=30, what=f"{name} to get {kind}")
        return {n for n in NAMES if self.got(n, kind)}


@pytest.fixture(scope="module")
def tree(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    with running_daemon(broker_url, tmp_path_factory.mktemp("msg"), config=AGENTS) as d:
        c = d.client()
        ids: dict[str, str] = {}
        for name in NAMES:
            parent = ids[PARENTS[name]] if name in PARENTS else None
            ids[name] = c.spawn_recursive_vsm(parent, SpawnConfig(name=name, agent="msglog")).id
        yield Tree(d, c, ids)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return res.stdout


def refused(res: subprocess.CompletedProcess[str], code: str) -> str:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith(f"vsmctl: {code}: "), line
    return line


def test_send_reaches_the_agent_from_vsmctl(tree: Tree) -> None:
    a = tree.ids["a"]
    assert ok(tree.d.vsmctl("send", a, "hello", "--body", '{"x": 1}')) == f"sent hello to {a}\n"
    [entry] = poll_for(lambda: tree.got("a", "hello"), timeout=30, what="a to get hello")
    assert entry == {"kind": "hello", "body": {"x": 1}, "sender": "vsmctl", "path": ""}
    assert ok(tree.d.vsmctl("send", "-q", a, "quiet")) == ""
    poll_for(lambda: tree.got("a", "quiet"), timeout=30, what="a to get quiet")
    tree.c.send(a, "by-client")  # returns once the broker has it in the inbox
    [entry] = tree.got("a", "by-client")
    assert entry["body"] == {} and entry["sender"] == "vsmctl"


def test_send_wait_prints_the_agents_answer(tree: Tree) -> None:
    echo = tree.c.spawn_recursive_vsm(None, SpawnConfig(name="echo")).id  # noop: it echoes
    out = ok(tree.d.vsmctl("send", echo, "hello", "--body", '{"x": [1, 2]}', "--wait", "--json"))
    assert json.loads(out) == {"echo": {"x": [1, 2]}, "kind": "hello"}
    out = ok(tree.d.vsmctl("send", echo, "hello", "--body", '{"x": "y"}', "--wait"))
    assert [line.split() for line in out.splitlines()] == [
        ["echo", '{"x":"y"}'],
        ["kind", "hello"],
    ]
    assert tree.c.send(echo, "hi", {"n": 3}, wait=True) == {"echo": {"n": 3}, "kind": "hi"}
    me = tree.c.send(tree.ids["b"], "asked", wait=True, timeout=30)
    assert me == {"me": "r.a.b", "kind": "asked"}


def test_broadcast_reaches_every_descendant_but_not_the_vsm(tree: Tree) -> None:
    out = ok(tree.d.vsmctl("broadcast", tree.ids["a"], "sub", "--body", '{"n": 1}'))
    assert out == f"broadcast sub below {tree.ids['a']} (every descendant)\n"
    assert tree.receivers("sub", {"b", "c"}) == {"b", "c"}
    [entry] = tree.got("c", "sub")
    assert entry == {"kind": "sub", "body": {"n": 1}, "sender": "vsmctl", "path": ""}


def test_broadcast_depth_1_reaches_the_children_only(tree: Tree) -> None:
    ok(tree.d.vsmctl("broadcast", tree.ids["r"], "kids", "--depth", "1"))
    assert tree.receivers("kids", {"a", "a2"}) == {"a", "a2"}


def test_broadcast_depth_2_stops_two_levels_down(tree: Tree) -> None:
    ok(tree.d.vsmctl("broadcast", "-q", tree.ids["r"], "two", "--depth", "2"))
    assert tree.receivers("two", {"a", "a2", "b"}) == {"a", "a2", "b"}
    tree.c.broadcast(tree.ids["a"], "two-from-a", depth=2)
    assert tree.receivers("two-from-a", {"b", "c"}) == {"b", "c"}


def test_a_bad_body_is_refused_before_anything_is_sent(tree: Tree) -> None:
    a = tree.ids["a"]
    line = refused(tree.d.vsmctl("send", a, "bad", "--body", "{x: 1"), "BAD_JSON")
    assert "--body is not valid JSON" in line
    line = refused(tree.d.vsmctl("send", a, "bad", "--body", "[1]", "--wait"), "BAD_REQUEST")
    assert line.endswith("--body must be a JSON object, got list")
    refused(tree.d.vsmctl("broadcast", tree.ids["r"], "bad", "--body", "nope"), "BAD_JSON")
    tree.c.send(a, "after-bad")
    assert tree.receivers("after-bad", {"a"}) == {"a"}
    assert tree.receivers("bad", set()) == set()
    with pytest.raises(ProtocolError):
        tree.c.send(a, "")


def test_unknown_id_is_not_found(tree: Tree) -> None:
    for args in (
        ("send", "0123456789ab", "k"),
        ("send", "0123456789ab", "k", "--wait"),
        ("send", "not.an#id", "k"),
        ("broadcast", "0123456789ab", "k"),
    ):
        assert "no VSM with id" in refused(tree.d.vsmctl(*args), "NOT_FOUND")
    with pytest.raises(NotFound):
        tree.c.send("0123456789ab", "k")
    with pytest.raises(NotFound):
        tree.c.ping_vsm("0123456789ab")


def kill_and_wait_down(tree: Tree, vsm_id: str) -> None:
    pid = tree.c.show(vsm_id).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    poll_for(lambda: tree.c.show(vsm_id).status != "running", timeout=60, what="it to be down")


def test_a_vsm_that_is_down_is_unreachable(tree: Tree) -> None:
    cfg = SpawnConfig(name="gone", agent="msglog", policy=Policy(restart="temporary"))
    gone = tree.c.spawn_recursive_vsm(None, cfg).id
    tree.c.send(gone, "alive")
    kill_and_wait_down(tree, gone)
    for wait in ((), ("--wait",)):
        line = refused(tree.d.vsmctl("send", gone, "k", *wait), "UNREACHABLE")
        assert f"VSM {gone} (gone) is not running (status " in line
    with pytest.raises(Unreachable) as info:
        tree.c.send(gone, "k")
    assert info.value.details["status"] != "running"
    with pytest.raises(Unreachable):
        tree.c.ping_vsm(gone)


def test_a_vsm_that_goes_down_while_answering_is_unreachable(tree: Tree) -> None:
    cfg = SpawnConfig(name="dies", agent="msglog", policy=Policy(restart="temporary"))
    dies = tree.c.spawn_recursive_vsm(None, cfg).id
    cmd = [str(BIN / "vsmctl"), "send", dies, "hold", "--body", '{"seconds": 300}', "--wait"]
    # Far longer than the probes need: a TIMEOUT here means the probe did not notice.
    proc = subprocess.Popen(
        [*cmd, "--timeout", "240"],
        env=tree.d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll_for(lambda: tree.log(dies), timeout=30, what="the agent to hold")
        kill_and_wait_down(tree, dies)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    assert err.startswith("vsmctl: UNREACHABLE: ") and f"VSM {dies} (dies) went down before" in err
