"""Every VSM an MCP server: driven by the SDK's own stdio client through `vsmctl mcp`, by
vsmctl's scripting commands, by VsmClient, and from inside VSMs (3 levels of recursion through
tool calls); authority refusals; every failure of the MCP issue (unknown, dead, killed
mid-call, broker lost, malformed JSON-RPC) answered with an error, never a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pika
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import REQUEST_TIMEOUT

from tests.support.harness import BIN, DaemonProc, poll_for, running_daemon
from tests.support.tcp_proxy import TcpProxy
from vsmctl.client import VsmClient
from vsmd.mcp import wire
from vsmd.mcp.client import create_mcp_client
from vsmd.protocol import Envelope, Policy, SpawnConfig

AGENTS = {"agent_modules": ["tests.support.agents", "tests.support.mcp_agents"]}
TOOLS = {
    "status",
    "spawn_child",
    "list_children",
    "terminate_child",
    "get_state",
    "set_policy",
    "send",
    "raise_alert",
}


@dataclass
class Tree:
    d: DaemonProc
    c: VsmClient
    root: str
    a: str
    b: str


@pytest.fixture(scope="module")
def tree(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    with running_daemon(broker_url, tmp_path_factory.mktemp("mcp"), config=AGENTS) as d:
        c = d.client()
        root = c.spawn_recursive_vsm(None, SpawnConfig(name="root", agent="mcpdrive")).id
        a = c.spawn_recursive_vsm(root, SpawnConfig(name="a", agent="mcpdrive")).id
        b = c.spawn_recursive_vsm(root, SpawnConfig(name="b", agent="mcpdrive")).id
        yield Tree(d, c, root, a, b)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_sdk_stdio_client_drives_vsmctl_mcp(tree: Tree) -> None:
    async def main() -> tuple[set[str], dict[str, Any], str, str]:
        params = StdioServerParameters(
            command=str(BIN / "vsmctl"), args=["mcp", tree.root], env={**os.environ, **tree.d.env}
        )
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            init = await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            status = await s.call_tool("status", {})
            state = await s.read_resource(f"vsm://{tree.root}/state")
            assert status.structured_content is not None
            text = getattr(state.contents[0], "text", "")
            return tools, status.structured_content, text, init.server_info.name

    tools, status, state, name = asyncio.run(asyncio.wait_for(main(), 60))
    assert TOOLS | {"slow", "echo"} <= tools
    assert status["id"] == tree.root and status["path"] == "root"
    assert status["caller"] == {"id": "vsmctl", "role": "full"}
    assert orjson.loads(state)["id"] == tree.root
    assert name == "vsm root"


def test_vsmctl_tools_call_and_resources_script_a_vsm(tree: Tree) -> None:
    listed = orjson.loads(ok(tree.d.vsmctl("tools", tree.a, "--json")))
    by_name = {t["name"]: t for t in listed}
    assert set(by_name) >= TOOLS and by_name["status"]["read_only"]
    assert not by_name["spawn_child"]["read_only"]
    echoed = orjson.loads(
        ok(tree.d.vsmctl("call", "root.a", "echo", "--arg", "n=3", "--arg", "s=x", "--json"))
    )
    assert echoed == {"echo": {"n": 3, "s": "x"}, "caller": "vsmctl", "role": "full"}
    uris = ok(tree.d.vsmctl("resources", tree.a)).split()
    assert {f"vsm://{tree.a}/{r}" for r in ("state", "children", "events", "note")} <= set(uris)
    note = ok(tree.d.vsmctl("resources", tree.a, "--read", f"vsm://{tree.a}/note"))
    assert note.strip() == "note of root.a"
    failed = tree.d.vsmctl("call", tree.a, "terminate_child", "--arg", f"id={tree.b}")
    assert (
        failed.returncode == 4
        and failed.stderr.startswith("vsmctl: UNAUTHORIZED: ")
        and "not in its subtree" in failed.stderr
    )


def test_recursion_through_mcp_three_levels(tree: Tree) -> None:
    got = tree.c.call(tree.root, "recurse", {"name": "deep"}, timeout=120)
    assert got["kids"] == ["root.deep.g"]
    info = tree.c.show(got["grandchild"])
    assert info.path == "root.deep.g" and info.parent == got["child"] and info.status == "running"
    tree.c.terminate_child_vsm(got["child"])


def test_a_vsm_has_no_authority_over_its_parent_or_sibling(tree: Tree) -> None:
    for target in (tree.root, tree.b):
        got = tree.c.call(tree.a, "mcp_to", {"target": target, "tool": "status"}, timeout=60)
        assert got["error"]["code"] == wire.UNAUTHORIZED, got
        assert "has no authority over" in got["error"]["message"]
    down = tree.c.call(tree.root, "mcp_to", {"target": tree.a, "tool": "echo", "args": {"k": 1}})
    assert down["result"] == {"echo": {"k": 1}, "caller": tree.root, "role": "full"}
    own = tree.c.call(tree.a, "mcp_to", {"target": tree.a, "tool": "status"}, timeout=60)
    assert own["result"]["caller"] == {"id": tree.a, "role": "full"}


def test_set_policy_send_alert_and_events_through_tools(tree: Tree) -> None:
    async def main() -> tuple[Any, Any, Any]:
        async with tree.c.mcp(tree.root) as s:
            pol = await s.call_tool("set_policy", {"values": {"x-mode": "careful"}})
            alert = await s.call_tool("raise_alert", {"severity": "warning", "text": "mcp alert"})
            events = await s.read_resource(f"vsm://{tree.root}/events")
            return pol, alert, events

    pol, alert, events = asyncio.run(main())
    assert not pol.is_error and not alert.is_error
    poll_for(
        lambda: tree.c.state(tree.a)["effective_policy"].get("x-mode") == "careful",
        30,
        what="policy set through MCP to reach a child",
    )
    kinds = [e["kind"] for e in orjson.loads(getattr(events.contents[0], "text", ""))["events"]]
    assert "policy" in kinds and "alert" in kinds
    _, found = tree.c.events(0)
    assert any(e.get("kind") == "alert" and "mcp alert" in e.get("message", "") for e in found)


def test_a_plain_agent_adds_a_tool_that_runs_in_a_thread(tree: Tree) -> None:
    vid = tree.c.spawn_recursive_vsm(tree.root, SpawnConfig(name="plain", agent="mcpplain")).id
    try:
        out = orjson.loads(
            ok(tree.d.vsmctl("call", vid, "add", "--arg", "a=2", "--arg", "b=5", "--json"))
        )
        assert out == {"sum": 7}
    finally:
        tree.c.terminate_child_vsm(vid)


def test_unknown_and_stopped_vsms_answer_errors_at_once(tree: Tree) -> None:
    unknown = tree.d.vsmctl("call", "0123456789ab", "status", "--timeout", "20")
    assert unknown.returncode == 1 and "UNREACHABLE" in unknown.stderr, unknown.stderr
    vid = tree.c.spawn_recursive_vsm(tree.root, SpawnConfig(name="gone")).id
    tree.c.terminate_child_vsm(vid)
    gone = tree.d.vsmctl("call", vid, "status", "--timeout", "20")
    assert gone.returncode == 1 and f"VSM {vid} is unknown or down" in gone.stderr


def test_a_vsm_killed_mid_call_fails_the_call_and_the_session_reopens(tree: Tree) -> None:
    policy = Policy(restart="permanent")
    vid = tree.c.spawn_recursive_vsm(
        tree.root, SpawnConfig(name="victim", agent="mcpdrive", policy=policy)
    ).id
    first_pid = tree.c.show(vid).pid
    assert first_pid

    async def main() -> tuple[MCPError, dict[str, Any]]:
        async with tree.c.mcp(vid, timeout=60) as s:
            call = asyncio.ensure_future(s.call_tool("slow", {"seconds": 60}))
            await asyncio.to_thread(
                poll_for, lambda: tree.c.state(vid)["data"].get("slow_started"), 30
            )
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(MCPError) as failed:
                await asyncio.wait_for(call, 30)

            def restarted() -> bool:
                info = tree.c.show(vid)
                return info.status == "running" and info.pid != first_pid

            await asyncio.to_thread(poll_for, restarted, 60)
            again = await s.call_tool("status", {})  # the same ClientSession, a new VSM process
            assert again.structured_content is not None
            return failed.value, again.structured_content

    err, status = asyncio.run(main())
    assert err.code == wire.UNREACHABLE and "went down before it answered" in err.message
    assert status["id"] == vid and status["pid"] != first_pid
    tree.c.terminate_child_vsm(vid)


def test_a_call_that_times_out_stops_its_handler_on_the_vsm(tree: Tree) -> None:
    vid = tree.c.spawn_recursive_vsm(tree.root, SpawnConfig(name="patient", agent="mcpdrive")).id

    async def main() -> tuple[MCPError, dict[str, Any]]:
        async with tree.c.mcp(vid, timeout=2) as s:
            with pytest.raises(MCPError) as late:
                await s.call_tool("slow", {"seconds": 60})
            # The client's notifications/cancelled reaches the VSM, which cancels the tool.
            await asyncio.to_thread(
                poll_for, lambda: tree.c.state(vid)["data"].get("slow_cancelled"), 30
            )
            again = await s.call_tool("echo", {"x": 1})  # the session goes on
            assert again.structured_content is not None
            return late.value, again.structured_content

    err, echo = asyncio.run(main())
    assert err.code == REQUEST_TIMEOUT
    assert tree.c.state(vid)["data"]["slow_started"] == tree.c.state(vid)["data"]["slow_cancelled"]
    assert echo["echo"] == {"x": 1}
    tree.c.terminate_child_vsm(vid)


def test_a_lost_broker_fails_pending_calls_and_the_next_call_reopens(tree: Tree) -> None:
    proxy = TcpProxy(tree.d.broker_url)
    try:

        async def main() -> tuple[MCPError, dict[str, Any]]:
            async with create_mcp_client(proxy.url, tree.d.namespace, tree.a, timeout=60) as s:
                call = asyncio.ensure_future(s.call_tool("slow", {"seconds": 60}))
                await asyncio.to_thread(
                    poll_for, lambda: tree.c.state(tree.a)["data"].get("slow_started"), 30
                )
                assert proxy.cut(os.getpid()) >= 1
                with pytest.raises(MCPError) as failed:
                    await asyncio.wait_for(call, 30)
                proxy.heal(os.getpid())
                again = await s.call_tool("echo", {"after": "reconnect"})
                assert again.structured_content is not None
                return failed.value, again.structured_content

        err, echoed = asyncio.run(main())
    finally:
        proxy.close()
    assert err.code == wire.BROKER_LOST, err
    assert echoed["echo"] == {"after": "reconnect"}


def _raw_mcp(broker_url: str, ns: str, vsm_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Publish one hand-made envelope to a VSM's inbox; the body of its answer."""
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = conn.channel()
        reply_to = ch.queue_declare("", exclusive=True).method.queue
        env = Envelope(type="mcp", sender="vsmctl", body=body).encode()
        props = pika.BasicProperties(reply_to=reply_to, correlation_id="raw")
        ch.basic_publish(f"{ns}.recursive", f"vsm.{vsm_id}", env, props)
        for _method, _props, raw in ch.consume(reply_to, auto_ack=True, inactivity_timeout=20):
            assert raw is not None, "no answer within 20 s"
            answer: dict[str, Any] = orjson.loads(raw)
            return answer
        raise AssertionError("unreachable")
    finally:
        conn.close()


def test_malformed_json_rpc_gets_its_error_and_the_server_keeps_serving(tree: Tree) -> None:
    url, ns = tree.d.broker_url, tree.d.namespace
    bad_method = _raw_mcp(
        url, ns, tree.b, {"session": "s1", "message": {"jsonrpc": "2.0", "id": 7, "method": 5}}
    )
    err = bad_method["body"]["message"]
    assert err["id"] == 7 and err["error"]["code"] == -32600, err
    garbage = _raw_mcp(url, ns, tree.b, {"session": "s1", "message": "garbage"})
    assert garbage["body"]["message"]["id"] is None
    assert garbage["body"]["message"]["error"]["code"] == -32600
    no_init = _raw_mcp(
        url,
        ns,
        tree.b,
        {"session": "s2", "message": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}},
    )
    assert no_init["body"]["message"]["error"]["code"] == wire.SESSION_UNKNOWN
    no_session = _raw_mcp(
        url, ns, tree.b, {"message": {"jsonrpc": "2.0", "id": 1, "method": "ping"}}
    )
    assert no_session["ok"] is False and no_session["error"]["code"] == "BAD_REQUEST"
    assert orjson.loads(ok(tree.d.vsmctl("call", tree.b, "status", "--json")))["id"] == tree.b


def test_a_line_that_is_no_json_rpc_gets_a_parse_error_from_the_bridge(tree: Tree) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    lines = [
        b"this is not json",
        orjson.dumps(init),
        orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "status", "arguments": {}},
            }
        ),
    ]
    answers: list[dict[str, Any]] = []
    with subprocess.Popen(
        [str(BIN / "vsmctl"), "mcp", tree.b],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **tree.d.env},
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for line in lines:
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
        while len(answers) < 3:
            raw = proc.stdout.readline()
            assert raw, "the bridge ended early"
            answers.append(orjson.loads(raw))
        proc.stdin.close()
        assert proc.wait(30) == 0  # stdin closed: the bridge is done
    assert answers[0]["id"] is None and answers[0]["error"]["code"] == -32700
    assert answers[1]["id"] == 1 and answers[1]["result"]["serverInfo"]["name"] == "vsm b"
    assert answers[2]["id"] == 2 and answers[2]["result"]["structuredContent"]["id"] == tree.b


def test_a_subscribed_state_resource_tells_of_each_change(tree: Tree) -> None:
    uri = f"vsm://{tree.b}/state"
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        params = getattr(message, "params", None)
        if getattr(message, "method", "") == "notifications/resources/updated" and params:
            heard.append(str(params.uri))

    async def main() -> None:
        url, ns = tree.d.broker_url, tree.d.namespace
        async with create_mcp_client(url, ns, tree.b, message_handler=on_message) as s:
            with warnings.catch_warnings():
                # The SDK marks resources/subscribe deprecated for the 2026-07-28 protocol; the
                # handshake-era sessions vsmd serves (and the hosts of today) still use it.
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await s.subscribe_resource(uri)
            await s.call_tool("set_policy", {"values": {"x-watch": "on"}})
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while uri not in heard and loop.time() < deadline:
                await asyncio.sleep(0.05)

    asyncio.run(main())
    assert uri in heard


def _imports(res: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level packages a `python -X importtime` run imported (from its stderr)."""
    names = set()
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_list_spawn_and_terminate_never_import_the_sdk(tree: Tree) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(BIN / "python"), "-X", "importtime", str(BIN / "vsmctl"), *args],
            env={**os.environ, **tree.d.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    spawned = run("spawn", "--parent", tree.root, "--name", "light", "-q")
    vid = spawned.stdout.strip()
    for res in (spawned, run("list"), run("terminate", vid)):
        imported = _imports(res)
        assert "typer" in imported  # the check sees what vsmctl imports
        assert not {"mcp", "mcp_types", "anyio", "starlette"} & imported
    assert "mcp" in _imports(run("tools", tree.root))  # and would see the SDK


def test_a_daemon_without_mcp_answers_mcp_with_an_error(broker_url: str, tmp_path: Any) -> None:
    with running_daemon(broker_url, tmp_path / "state", config={"mcp_server": False}) as d:
        vid = d.client().spawn_recursive_vsm(None, SpawnConfig(name="plain")).id
        res = d.vsmctl("call", vid, "status", "--timeout", "20")
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert "without MCP (mcp_server)" in res.stderr
        assert d.client().ping_vsm(vid)["pong"] == vid  # it serves everything else
