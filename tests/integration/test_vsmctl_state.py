"""vsmctl state, policy and watch as a user runs them, on a real daemon with a 3-level tree.

    r ── m ── g      (every VSM a ``recorder``: its ``do`` op ``state_set`` writes state)

The tree is shared by the tests of this module, so each test writes counters and keys of its
own and asserts only on those.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.harness import BIN, DaemonProc, poll_for, running_daemon
from vsmctl.client import VsmClient
from vsmd.protocol import SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}


@dataclass
class Tree:
    d: DaemonProc
    c: VsmClient
    ids: dict[str, str]

    def do(self, name: str, **cmd: Any) -> None:
        answer = self.c.call(self.ids[name], "do", cmd, timeout=60)
        assert "error" not in answer, answer

    def json(self, *args: str) -> Any:
        res = self.d.vsmctl(*args, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


@pytest.fixture(scope="module")
def tree(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    with running_daemon(broker_url, tmp_path_factory.mktemp("state"), config=AGENTS) as d:
        c = d.client()
        r = c.spawn_recursive_vsm(None, SpawnConfig(name="r", agent="recorder")).id
        m = c.spawn_recursive_vsm(r, SpawnConfig(name="m", agent="recorder")).id
        g = c.spawn_recursive_vsm(m, SpawnConfig(name="g", agent="recorder")).id
        yield Tree(d, c, {"r": r, "m": m, "g": g})


def refused(res: subprocess.CompletedProcess[str], code: str) -> str:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith(f"vsmctl: {code}: "), line
    return line


def test_a_grandchilds_update_shows_in_the_roots_subtree_summary(tree: Tree) -> None:
    tree.do("g", op="state_set", counts={"hits": 2}, data={"reading": 21.5})

    def summary() -> dict[str, Any] | None:
        sub: dict[str, Any] = tree.json("state", tree.ids["r"])["metrics"].get("subtree") or {}
        return sub if sub.get("counters", {}).get("hits") == 2 else None

    sub = poll_for(summary, timeout=60, interval=0.3, what="g's hits in r's subtree summary")
    assert sub["count"] == 3
    shown = tree.json("state", tree.ids["g"])
    assert shown["identity"]["path"] == "r.m.g"
    assert shown["data"]["reading"] == 21.5
    assert shown["metrics"]["c.hits"] == 2
    human = tree.d.vsmctl("state", tree.ids["r"])
    assert human.returncode == 0, human.stderr
    assert f"r (id {tree.ids['r']}, name r, depth 1)" in human.stdout
    assert "3 VSM(s), worst health ok, counters hits=2" in human.stdout


def test_policy_set_at_the_root_is_the_grandchilds_effective_policy(tree: Tree) -> None:
    r, g = tree.ids["r"], tree.ids["g"]
    res = tree.d.vsmctl("policy", "set", r, "x-mode=safe", "max_children=5", "x-list=[1,2]")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"policy of r ({r}): x-mode=safe, max_children=5, x-list=[1,2]")

    shown = tree.json("policy", "show", g)
    assert shown["effective"] == {"x-mode": "safe", "max_children": 5, "x-list": [1, 2]}
    assert shown["own"] == {}
    assert [layer["path"] for layer in shown["layers"]] == ["r", "r.m", "r.m.g"]
    assert tree.json("state", g)["effective_policy"] == shown["effective"]

    def at_the_grandchild() -> dict[str, Any] | None:
        answer = tree.c.call(g, "do", {"op": "state_show"}, timeout=60)
        policy: dict[str, Any] = answer["result"]["policy"]
        return policy if policy.get("x-mode") == "safe" else None

    # It flowed down to the grandchild's process too, not only into the daemon's view.
    poll_for(at_the_grandchild, timeout=60, interval=0.3, what="x-mode at the grandchild")

    # KEY= and KEY=null delete.
    after = tree.json("policy", "set", r, "x-mode=", "x-list=null")
    assert after["own"] == {"max_children": 5}
    assert tree.json("policy", "show", g)["effective"] == {"max_children": 5}


@contextlib.contextmanager
def watching(d: DaemonProc, *args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``vsmctl watch ARGS`` running, and the lines it printed so far (read by a thread)."""
    with subprocess.Popen(
        [str(BIN / "vsmctl"), "watch", *args],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            yield proc, lines
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(60)
            reader.join(60)


def test_watch_prints_the_changes_made_while_it_runs(tree: Tree) -> None:
    with watching(tree.d, tree.ids["g"], "--json", "--count", "4") as (proc, lines):

        def four_lines() -> bool:
            # Until it has subscribed nothing reaches it: keep changing state until it has seen 4.
            if proc.poll() is None:
                tree.do("g", op="state_set", counts={"ticks": 1})
            return len(lines) >= 4 or proc.poll() is not None

        poll_for(four_lines, timeout=60, interval=0.3, what="four updates from vsmctl watch")
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    assert len(lines) == 4
    with_ticks = 0
    for line in lines:
        delta = json.loads(line)
        assert delta["id"] == tree.ids["g"]
        assert delta["path"] == "r.m.g"
        assert isinstance(delta["time"], float)
        ticks = [ch for ch in delta["changes"] if ch["key"] == "c.ticks"]
        if not ticks:  # the runtime's own figures, every 5 s while they change
            assert {ch["key"] for ch in delta["changes"]} <= {"msg_in", "msg_out"}, delta
            continue
        with_ticks += 1
        assert ticks[0]["section"] == "metrics"
        assert isinstance(ticks[0]["value"], int)
    assert with_ticks >= 2


def test_watch_ends_cleanly_on_ctrl_c(tree: Tree) -> None:
    with watching(tree.d, tree.ids["m"]) as (proc, lines):

        def a_line() -> bool:
            tree.do("m", op="state_set", data={"note": "seen"})
            return any("r.m data note = seen" in line for line in lines)

        poll_for(a_line, timeout=60, interval=0.3, what="vsmctl watch to print a change")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""


def test_refusals_exit_1_with_the_code(tree: Tree) -> None:
    r, d = tree.ids["r"], tree.d
    for args in (
        ("state", "nosuchvsm"),
        ("policy", "show", "nosuchvsm"),
        ("policy", "set", "nosuchvsm", "x-a=1"),
        ("watch", "nosuchvsm"),
    ):
        assert "no VSM with id 'nosuchvsm'" in refused(d.vsmctl(*args), "NOT_FOUND")
    line = refused(d.vsmctl("policy", "set", r, "nonsense=1"), "BAD_REQUEST")
    assert "'nonsense' is not a policy key" in line  # the daemon's own message
    line = refused(d.vsmctl("policy", "set", r, "max_children=-1"), "BAD_REQUEST")
    assert "must be a number of 0 or more" in line
    line = refused(d.vsmctl("policy", "set", r, "x-list=[1,2"), "BAD_REQUEST")
    assert "not valid JSON" in line
    line = refused(d.vsmctl("policy", "set", r, "max_children"), "BAD_REQUEST")
    assert "wants KEY=VALUE" in line
    # Nothing of the above changed r's policy.
    assert "nonsense" not in tree.json("policy", "show", r)["own"]


def test_watch_without_a_daemon_exits_3(tree: Tree) -> None:
    res = tree.d.vsmctl("watch", tree.ids["g"], "--namespace", "nosuchns", "--timeout", "2")
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "no vsmd answering on namespace nosuchns" in res.stderr


def test_watch_from_python_and_stop(tree: Tree) -> None:
    g = tree.ids["g"]
    seen = threading.Event()

    def keep_changing() -> None:
        # The first next() subscribes and then blocks: changes come from another client.
        def changed() -> bool:
            if seen.is_set():
                return True
            tree.do("g", op="state_set", data={"py": 1})
            return False

        poll_for(changed, timeout=60, interval=0.3, what="the watcher to see a change")

    with VsmClient(tree.d.broker_url, tree.d.namespace, 30) as c:
        updates = c.watch(g)
        changer = threading.Thread(target=keep_changing, daemon=True)
        changer.start()
        # The runtime's own metrics (its message rates) may come first: skip to the data.
        delta = next(d for d in updates if any(ch["section"] == "data" for ch in d["changes"]))
        seen.set()
        changer.join(60)
        updates.close()  # unsubscribes; the client goes on working
        assert delta["id"] == g
        assert {"section": "data", "key": "py", "value": 1} in delta["changes"]
        assert c.state(g)["identity"]["id"] == g


def test_a_client_watch_ends_when_its_stop_says_so(tree: Tree) -> None:
    asked = threading.Event()
    ended: list[bool] = []

    def follow() -> None:
        for _delta in tree.d.client().watch(tree.ids["m"], asked.is_set):
            pass
        ended.append(True)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    asked.set()
    t.join(30)
    assert ended == [True]
