"""llm_worker against a chat-completions server that speaks the OpenAI API with scripted
answers (tests/support/chat_server.py): recursive delegation through its VSM's MCP tools,
retries and timeouts, a model that loops or asks for a tool it may not use, token counts and
the token budget from policy, bad settings refused before fork."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.chat_server import ChatServer
from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmctl.client import VsmClient
from vsmd.errors import AgentError, QuotaExceeded, Timeout
from vsmd.protocol import SpawnConfig


@dataclass
class Setup:
    d: DaemonProc
    c: VsmClient
    chat: ChatServer

    def worker(self, name: str, **config: Any) -> str:
        settings = {"base_url": self.chat.url, "model": "scripted", "retries": 2, "backoff": 0.05}
        settings.update(config)
        return self.c.spawn_recursive_vsm(
            None, SpawnConfig(name=name, agent="llm_worker", settings=settings)
        ).id


@pytest.fixture(scope="module")
def setup(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    chat = ChatServer()
    try:
        with running_daemon(broker_url, tmp_path_factory.mktemp("llm")) as d:
            yield Setup(d, d.client(), chat)
    finally:
        chat.close()


def test_a_worker_spawns_two_children_delegates_and_combines(setup: Setup) -> None:
    root = setup.worker("planner")
    got = setup.c.call(root, "complete", {"prompt": "PLAN north south"}, timeout=120)
    assert got == {"answer": "combined: north says NORTH | south says SOUTH", "turns": 3}
    kids = {v.path: v for v in setup.c.list_child_vsms(root)}
    assert set(kids) == {"planner.north", "planner.south"}
    assert kids["planner.north"].agent == "llm_worker"

    def counted() -> bool:
        metrics = setup.c.state(root)["metrics"]
        return bool(
            metrics.get("c.llm_calls") == 3
            and metrics.get("c.llm_prompt_tokens") == 30
            # Its own 3 calls and one of each child, summed up the tree.
            and metrics["subtree"]["counters"].get("llm_calls") == 5
        )

    poll_for(counted, 30, what="the token counts in the planner's state")
    # The same through MCP, as any MCP host would ask it.
    out = setup.d.vsmctl("call", root, "complete", "--arg", "prompt=PART east", "--json")
    assert out.returncode == 0, out.stderr
    assert '"answer": "east says EAST"' in out.stdout


def test_failures_are_retried_and_a_slow_model_times_out(setup: Setup) -> None:
    vid = setup.worker("retrier")
    before = len(setup.chat.requests)
    setup.chat.fail_next = 2
    assert setup.c.call(vid, "complete", {"prompt": "hello"})["answer"] == "echo: hello"
    assert len(setup.chat.requests) - before == 3  # two 500s, then the answer
    setup.chat.fail_next = 3
    with pytest.raises(AgentError, match="failed 3 times; last: HTTP 500"):
        setup.c.call(vid, "complete", {"prompt": "again"})
    slow = setup.worker("slowpoke", timeout=0.5, retries=0)
    setup.chat.slow_seconds = 2.0
    with pytest.raises(Timeout, match=r"no answer within 0\.5 s"):
        setup.c.call(slow, "complete", {"prompt": "SLOW"})
    setup.chat.slow_seconds = 0.0
    assert setup.c.ping_vsm(slow)["pong"] == slow  # a failed call is no crash


def test_a_looping_model_and_a_forbidden_tool_get_error_results(setup: Setup) -> None:
    looper = setup.worker("looper", max_turns=3)
    with pytest.raises(AgentError, match="no answer within 3 turns"):
        setup.c.call(looper, "complete", {"prompt": "LOOP"})
    poll_for(lambda: setup.c.state(looper)["metrics"].get("c.llm_gave_up") == 1, 30)
    guarded = setup.worker("guarded", tools=["status"])
    said = setup.c.call(guarded, "complete", {"prompt": "FORBID"})["answer"]
    assert said == "the tool said: error: tool 'terminate_child' is not one this VSM offers you"
    offered = [t["function"]["name"] for t in setup.chat.requests[-1]["tools"]]
    assert offered == ["status"]


def test_the_token_budget_from_policy_stops_the_model(setup: Setup) -> None:
    vid = setup.worker("budgeted")
    setup.c.policy_set(vid, {"x-llm-token-budget": 20})
    assert setup.c.call(vid, "complete", {"prompt": "one"})["answer"] == "echo: one"  # 15 used
    assert setup.c.call(vid, "complete", {"prompt": "two"})["answer"] == "echo: two"  # 30 used
    with pytest.raises(QuotaExceeded, match="is used up: 30 tokens"):
        setup.c.call(vid, "complete", {"prompt": "three"})


def test_bad_settings_are_refused_before_fork(setup: Setup) -> None:
    res = setup.d.vsmctl(
        "spawn", "--agent", "llm_worker", "--set", "base_url=ftp://x", "--set", "max_turns=0"
    )
    assert res.returncode == 1 and res.stderr.startswith("vsmctl: INVALID_CONFIG: "), res.stderr
    for text in (
        "'model' is a required property",
        "base_url: 'ftp://x' does not match",
        "max_turns: 0",
    ):
        assert text in res.stderr, res.stderr
