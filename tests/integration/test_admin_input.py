"""Bad admin input: each kind gets its stable error code, the daemon keeps answering, nothing
else changes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pika
import pika.spec
import pytest

from tests.support.harness import DaemonProc, new_namespace, run_tool
from vsmd.bus.topology import Topology
from vsmd.protocol import SpawnConfig

BAD_INPUTS = [
    (b"this is not json", "BAD_JSON"),
    (b"[1, 2, 3]", "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "explode", "args": {}}', "UNKNOWN_COMMAND"),
    (b'{"v": 1, "args": {}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "show", "args": {}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "show", "args": {"id": 42}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "list", "args": {"recursive": "yes"}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "spawn", "args": {"config": [1]}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "spawn", "args": {"colour": "red"}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "spawn", "args": {"name": "Not A Name!"}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "spawn", "args": {"parent": "nosuchvsm"}}', "NOT_FOUND"),
    (b'{"v": 1, "cmd": "terminate", "args": {"id": "nosuchvsm"}}', "NOT_FOUND"),
    (b'{"v": 1, "cmd": "terminate", "args": {"id": "x", "timeout": -3}}', "BAD_REQUEST"),
    (b'{"v": 1, "cmd": "show", "args": {"id": "nosuchvsm"}}', "NOT_FOUND"),
    (b'{"v": 99, "cmd": "ping"}', "BAD_REQUEST"),
    (
        b'{"v": 1, "cmd": "spawn", "args": {"config": {"pad": "' + b"x" * 70_000 + b'"}}}',
        "TOO_LARGE",
    ),
]


def test_bad_input_gets_its_code(daemon: DaemonProc) -> None:
    """Every bad request to one daemon, in a row: each gets its code and a message, and the
    daemon keeps answering with nothing changed after any of them."""
    c = daemon.client()
    keeper = c.spawn_recursive_vsm(None, SpawnConfig(name="keeper"))
    codes: list[str] = []
    for body, _code in BAD_INPUTS:
        reply = c.send_raw(body)
        assert reply["ok"] is False and reply["error"]["message"], reply
        codes.append(reply["error"]["code"])
        assert c.ping()["pong"] is True
    assert codes == [code for _body, code in BAD_INPUTS]
    assert [v.id for v in c.list_child_vsms()] == [keeper.id]  # nothing else changed
    assert c.show(keeper.id).status == "running"


def replies_to(d: DaemonProc, body: bytes, quiet: float = 2.0) -> list[dict[str, Any]]:
    """Send one admin request from a private reply queue with a known correlation id.

    Returns every reply that arrived: waits up to 60 s for the first one, then ``quiet`` more
    seconds for any other. Fails if a reply carries another correlation id.
    """
    corr = uuid.uuid4().hex
    got: list[tuple[str | None, bytes]] = []
    conn = pika.BlockingConnection(pika.URLParameters(d.broker_url))
    try:
        ch = conn.channel()
        reply_queue = ch.queue_declare("", exclusive=True).method.queue

        def on_reply(_ch: Any, _m: Any, props: pika.spec.BasicProperties, reply: bytes) -> None:
            got.append((props.correlation_id, reply))

        ch.basic_consume(reply_queue, on_reply, auto_ack=True)
        props = pika.BasicProperties(reply_to=reply_queue, correlation_id=corr)
        ch.basic_publish("", Topology(d.namespace).admin_queue, body, props)
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert got, f"no reply to {body!r} within 60 s"
        # Absence can only be checked over a window: a second reply would come within it.
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    finally:
        conn.close()
    assert {c for c, _ in got} == {corr}, got
    return [orjson.loads(r) for _, r in got]


def request(cmd: str, **args: Any) -> bytes:
    return orjson.dumps({"v": 1, "cmd": cmd, "args": args})


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_exactly_one_reply_per_request(daemon: DaemonProc) -> None:
    [pong] = replies_to(daemon, request("ping"))
    assert pong["result"]["pong"] is True
    [bad] = replies_to(daemon, b"this is not json")
    assert bad["error"]["code"] == "BAD_JSON"
    [missing] = replies_to(daemon, request("show", id="nosuchvsm"))
    assert missing["error"]["code"] == "NOT_FOUND"
    # Answered later, when the fork server and the VSM report back.
    [spawned] = replies_to(daemon, request("spawn", name="once"))
    assert spawned["result"]["status"] == "running"
    [conflict] = replies_to(daemon, request("spawn", name="once"))
    assert conflict["error"]["code"] == "CONFLICT"
    [gone] = replies_to(daemon, request("terminate", id=spawned["result"]["id"]))
    assert gone["result"] == {"terminated": [spawned["result"]["id"]]}


def test_vsmctl_without_daemon_exits_3_quickly(broker_url: str) -> None:
    ns = new_namespace()
    started = time.monotonic()
    res = run_tool("vsmctl", "ping", "--timeout", "120", namespace=ns, broker_url=broker_url)
    elapsed = time.monotonic() - started
    assert res.returncode == 3
    assert res.stderr.strip().splitlines() == [
        f"vsmctl: no vsmd answering on namespace {ns} at broker amqp://guest:***@localhost:5672/%2F"
    ]
    assert "Traceback" not in res.stderr
    assert elapsed < 60  # not the 120 s request timeout: the empty admin queue is seen at once


def test_vsmctl_with_no_broker_exits_3(broker_url: str) -> None:
    res = run_tool(
        "vsmctl",
        "list",
        "--broker",
        "amqp://guest:guest@127.0.0.1:1/%2F",
        namespace=new_namespace(),
        broker_url=broker_url,
    )
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsmctl: no vsmd answering on namespace")
    assert "Traceback" not in res.stderr


def test_vsmctl_usage_error_exits_2(broker_url: str) -> None:
    res = run_tool(
        "vsmctl", "spawn", "--set", "novalue", namespace=new_namespace(), broker_url=broker_url
    )
    assert res.returncode == 2
    assert "KEY=VALUE" in res.stderr
