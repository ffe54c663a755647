"""The VSM runtime: bad input on an inbox, a blocking agent, an agent that raises."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import orjson
import pika
import pytest

from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmd.bus.rpc import RpcChannel
from vsmd.bus.topology import Topology
from vsmd.errors import VsmdError
from vsmd.protocol import Envelope, SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.msg_agents"]}
LIMIT = 65536  # the daemon's default max_message_bytes, handed to every VSM


# (raw body, the code of the error reply it gets)
def _call(body: dict[str, object]) -> bytes:
    return orjson.dumps({"type": "call", "sender": "x", "body": body})


BAD = [
    (b"{not json", "BAD_JSON"),
    (b"[1, 2]", "BAD_REQUEST"),
    (orjson.dumps({"v": 99, "type": "call", "sender": "x"}), "BAD_REQUEST"),
    (orjson.dumps({"type": "call"}), "BAD_REQUEST"),  # no sender
    (orjson.dumps({"type": "call", "sender": 5}), "BAD_REQUEST"),
    (orjson.dumps({"type": "call", "sender": "x", "body": []}), "BAD_REQUEST"),
    (orjson.dumps({"type": "call", "sender": "x", "surprise": 1}), "BAD_REQUEST"),
    (orjson.dumps({"type": "launch", "sender": "x"}), "BAD_REQUEST"),
    (orjson.dumps({"type": "call", "sender": "x", "body": {"kind": 3}}), "BAD_REQUEST"),
    (orjson.dumps({"type": "call", "sender": "x", "body": {"args": "no"}}), "BAD_REQUEST"),
    # A broadcast's depth limit that is not a number: refused, not a fault of the runtime.
    (_call({"kind": "k", "within": 1, "from_depth": "abc"}), "BAD_REQUEST"),
    (_call({"kind": "k", "within": "2"}), "BAD_REQUEST"),
    (b"x" * (LIMIT + 1), "TOO_LARGE"),
]


@pytest.fixture
def daemon(broker_url: str, tmp_path: object) -> Iterator[DaemonProc]:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with running_daemon(broker_url, tmp_path, config=AGENTS) as d:
        yield d


@pytest.fixture
def rpc(daemon: DaemonProc) -> Iterator[RpcChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(daemon.broker_url))
    try:
        yield RpcChannel(conn)
    finally:
        conn.close()


def test_bad_input_gets_an_error_reply_and_the_vsm_keeps_serving(
    daemon: DaemonProc, rpc: RpcChannel
) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="target", agent="recorder")).id
    topo = Topology(daemon.namespace)
    for raw, code in BAD:
        reply = orjson.loads(rpc.call(topo.exchange, topo.id_key(vsm), raw, 30))
        assert reply["ok"] is False, raw[:80]
        assert reply["error"]["code"] == code, (raw[:80], reply)
        assert reply["error"]["message"]
    pong = c.ping_vsm(vsm)
    assert pong["refused"] == len(BAD)
    assert c.call(vsm, "hello", {"still": "here"}) == {"me": "target", "kind": "hello"}


def test_bad_input_without_reply_to_is_dead_lettered_with_its_reason(
    daemon: DaemonProc, rpc: RpcChannel
) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="target", agent="recorder")).id
    topo = Topology(daemon.namespace)
    conn = pika.BlockingConnection(pika.URLParameters(daemon.broker_url))
    try:
        ch = conn.channel()
        for raw, _code in BAD:
            ch.basic_publish(topo.exchange, topo.id_key(vsm), raw)
        dead: list[tuple[bytes, dict[str, object]]] = []

        def collect() -> bool:
            method, props, body = ch.basic_get(topo.dead_queue, auto_ack=True)
            if method is not None:
                dead.append((body, dict(props.headers or {})))
            return len(dead) == len(BAD)

        poll_for(collect, timeout=30, what="every bad message in the dead-letter queue")
    finally:
        conn.close()
    for (raw, code), (body, headers) in zip(BAD, dead, strict=True):
        assert body == raw
        assert str(headers["x-reason"]).startswith(code), headers
        assert headers["x-vsm"] == vsm
    assert c.ping_vsm(vsm)["refused"] == len(BAD)


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_a_blocked_plain_agent_does_not_stop_pings(daemon: DaemonProc, rpc: RpcChannel) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="slow", agent="blocker")).id
    topo = Topology(daemon.namespace)
    env = Envelope(type="call", sender="test", body={"kind": "block", "args": {"seconds": 10}})
    corr = rpc.send(topo.exchange, topo.id_key(vsm), env.encode(), 60)
    # While the agent sleeps in its worker thread, the VSM answers, again and again.
    for _ in range(5):
        assert c.ping_vsm(vsm, timeout=5)["pong"] == vsm
    reply = orjson.loads(rpc.wait(corr, 60))
    assert reply == {"ok": True, "result": {"done": "block"}}
    assert c.show(vsm).restarts == 0


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("oserror", "the agent failed on 'oserror'"),
        ("bug", "the agent failed on 'bug'"),
        # A result the reply cannot encode: before, no answer at all, and the caller waited
        # out its whole timeout.
        ("notjson", "the agent's result for 'notjson' is not JSON"),
        ("intkeys", "the agent's result for 'intkeys' is not JSON"),
    ],
)
def test_an_agent_that_fails_costs_one_error_reply(
    daemon: DaemonProc, kind: str, says: str
) -> None:
    c = daemon.client()
    vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="flaky", agent="failing"))
    with pytest.raises(VsmdError) as failed:
        c.call(vsm.id, kind, timeout=30)
    assert failed.value.code == "AGENT_ERROR"
    assert says in failed.value.message
    # Same process, same connection: an agent's OSError is not a lost broker.
    assert c.call(vsm.id, "fine", timeout=30) == {"fine": True}
    info = c.show(vsm.id)
    assert (info.pid, info.restarts, info.status) == (vsm.pid, 0, "running")
    log = daemon.log()
    assert "reconnected" not in log


def test_prewarm_runs_the_start_path_and_never_raises(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from vsmd.agents import AgentRegistry
    from vsmd.mcp.server import build_server
    from vsmd.spec import VsmSpec
    from vsmd.vsm.prewarm import prewarm

    template = VsmSpec(
        vsm_id="0123456789ab",
        name="x",
        path="x",
        parent_id=None,
        depth=1,
        agent="noop",
        broker_url=broker_url,
        namespace=f"prewarm{os.getpid()}",
    )
    caplog.set_level(logging.WARNING, logger="vsmd.forkserver")
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    exchange = Topology(template.namespace).exchange
    try:
        conn.channel().exchange_declare(exchange, exchange_type="topic")  # as the daemon does
        prewarm(template, AgentRegistry(), build_server())
    finally:
        conn.channel().exchange_delete(exchange)
        conn.close()
    assert "prewarm skipped" not in caplog.text  # it reached the broker and itself
    # Without a broker it says so and goes on: the fork server must still fork.
    prewarm(
        dataclasses.replace(template, broker_url="amqp://guest:guest@127.0.0.1:1/%2F"),
        AgentRegistry(),
        build_server(),
    )
    assert "prewarm skipped" in caplog.text


def test_a_spawn_that_takes_seconds_spawns_one_child(daemon: DaemonProc) -> None:
    c = daemon.client()
    cfg = {"children": ["kid"], "child_agent": "slowborn", "child_config": {"born_after": 3}}
    parent = c.spawn_recursive_vsm(None, SpawnConfig(name="p", agent="spawner", settings=cfg))

    def kid_running() -> bool:
        kids = c.list_child_vsms(parent.id, recursive=False)
        return any(k.name == "kid" and k.status == "running" for k in kids)

    poll_for(kid_running, timeout=60, what="the slow child to be running")
    # While the parent waited 3 s for its answer, nothing it sent was taken as another spawn.
    assert [k.name for k in c.list_child_vsms(parent.id, recursive=False)] == ["kid"]


def test_first_requests_made_at_once_all_get_answers(daemon: DaemonProc) -> None:
    # They used to race to start the VSM's reply consumer; the second start closed its channel
    # and left the VSM deaf on a live connection.
    c = daemon.client()
    asker = c.spawn_recursive_vsm(None, SpawnConfig(name="asker", agent="recorder")).id
    kid = c.spawn_recursive_vsm(asker, SpawnConfig(name="kid", agent="recorder")).id
    answer = c.call(asker, "do", {"op": "parallel", "target": kid, "n": 10}, timeout=60)
    assert answer == {"result": ["ask"] * 10}
    assert c.call(asker, "log", timeout=30) == {"got": []}  # and it still hears its inbox
