"""The two dispatchers that carry MCP between a client and a VSM's session (in memory, no
broker): the shape check of JSON-RPC on receipt, cancellation on time-out and by the caller,
errors the SDK's runner raises, and requests the VSM sends to its client."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import mcp_types as types
import orjson
import pytest
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, REQUEST_TIMEOUT

from tests.unit.mcp_mem import MemLink, make_host, raw_session, run, session_of
from vsmctl.mcp_bridge import Relay
from vsmd.errors import ProtocolError
from vsmd.mcp import wire
from vsmd.mcp.dispatch import SessionDispatcher
from vsmd.mcp.host import McpHost
from vsmd.mcp.registry import FULL, Caller, McpRegistry
from vsmd.mcp.transport import INBOUND, ClientDispatcher
from vsmd.protocol import Envelope


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("garbage", "an object is needed"),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, "jsonrpc must be '2.0'"),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, "method must be a string"),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, "id must be a string or an integer"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, "id must be a string or an integer"),
        ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}, "params must be an object"),
        ({"jsonrpc": "2.0", "id": 1, "result": 3}, "result must be an object"),
        (
            {"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}},
            "error must be an object with a code and a message",
        ),
        ({"jsonrpc": "2.0", "id": 1}, "neither a request, a notification nor an answer"),
    ],
)
def test_what_is_no_json_rpc_is_refused_with_why(raw: Any, why: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        wire.parse(raw)
    assert refused.value.message == f"not a JSON-RPC 2.0 message: {why}"


def test_each_kind_of_message_is_told_apart() -> None:
    req = wire.parse({"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {}})
    assert (req.kind, req.id, req.method, req.params) == ("request", "a", "tools/list", {})
    note = wire.parse({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (note.kind, note.id, note.method) == ("notification", None, "notifications/initialized")
    res = wire.parse({"jsonrpc": "2.0", "id": 3, "result": {"x": 1}})
    assert (res.kind, res.id, res.result) == ("result", 3, {"x": 1})
    err = wire.parse({"jsonrpc": "2.0", "id": None, "error": {"code": -1, "message": "no"}})
    assert (err.kind, err.id, err.error) == ("error", None, {"code": -1, "message": "no"})


def _slow_tool(reg: McpRegistry) -> dict[str, Any]:
    seen: dict[str, Any] = {"started": 0, "cancelled": 0}

    async def slow(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        seen["started"] += 1
        try:
            await asyncio.Event().wait()  # only a cancellation ends it
        except asyncio.CancelledError:
            seen["cancelled"] += 1
            raise
        return {}

    reg.tool("slow", slow)
    return seen


async def _until(check: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def _running(host: McpHost) -> int:
    return sum(s.dispatcher.in_flight for s in host.sessions.values())


def test_a_call_that_times_out_is_cancelled_on_the_vsm_and_never_answered() -> None:
    async def main() -> None:
        host, reg, _gate = make_host()
        seen = _slow_tool(reg)
        async with session_of(MemLink(host, Caller("vsmctl", "", FULL))) as s:
            with pytest.raises(MCPError) as late:
                await s.call_tool("slow", {}, read_timeout_seconds=0.2)
            assert late.value.code == REQUEST_TIMEOUT
            await _until(lambda: seen["cancelled"] == 1, "the VSM's handler is cancelled")
            await _until(lambda: _running(host) == 0, "the VSM runs nothing for the session")
            assert (await s.call_tool("status", {})).structured_content == {
                "ok": True,
                "role": FULL,
            }

    run(main())


def test_a_caller_that_gives_up_cancels_the_vsms_handler() -> None:
    async def main() -> None:
        host, reg, _gate = make_host()
        seen = _slow_tool(reg)
        async with session_of(MemLink(host, Caller("vsmctl", "", FULL))) as s:
            call = asyncio.ensure_future(s.call_tool("slow", {}))
            await _until(lambda: seen["started"] == 1, "the VSM runs the tool")
            call.cancel()
            await _until(lambda: seen["cancelled"] == 1, "the VSM's handler is cancelled")
            await _until(lambda: _running(host) == 0, "the VSM runs nothing for the session")
            assert call.cancelled()

    run(main())


def test_the_runners_refusals_reach_the_caller_and_the_session_goes_on() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        link = MemLink(host, Caller("vsmctl", "", FULL))
        async with raw_session(link) as (d, s):
            with pytest.raises(MCPError) as no_name:
                await d.send_raw_request("tools/call", {"arguments": {}})
            assert no_name.value.code == INVALID_PARAMS
            with pytest.raises(MCPError) as unknown:
                await d.send_raw_request("no/such/method", None)
            assert unknown.value.code == METHOD_NOT_FOUND
            await s.send_ping()
            assert (await s.call_tool("status", {})).structured_content is not None

    run(main())


def test_the_vsm_asks_its_client_and_hears_the_answer() -> None:
    async def main() -> None:
        host, _reg, _gate = make_host()
        async with session_of(MemLink(host, Caller("vsmctl", "", FULL))):
            [session] = host.sessions.values()
            assert session.connection is not None
            # A ping from the VSM's side: its request goes to the client's session, whose
            # answer comes back to the VSM's waiting call.
            await asyncio.wait_for(session.connection.ping(), 5.0)

    run(main())


def test_the_bridge_keeps_the_hosts_ids_and_drops_what_the_host_cancelled() -> None:
    init = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "a host", "version": "1"},
    }

    async def main() -> None:
        host, reg, _gate = make_host()
        seen = _slow_tool(reg)
        link = MemLink(host, Caller("vsmctl", "", FULL))
        to_host, from_bridge = anyio.create_memory_object_stream[SessionMessage](16)
        async with (
            to_host,
            from_bridge,
            ClientDispatcher(link, "down.root", "VSM root", "vsmctl") as vsm,
        ):
            relay = Relay(vsm, to_host)
            async with anyio.create_task_group() as tg:
                await tg.start(vsm.run, relay.asked, relay.told)
                await relay.from_host(
                    types.JSONRPCRequest(jsonrpc="2.0", id=7, method="initialize", params=init)
                )
                answer = (await from_bridge.receive()).message
                assert isinstance(answer, types.JSONRPCResponse) and answer.id == 7
                await relay.from_host(
                    types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
                )
                call = {"name": "slow", "arguments": {}}
                await relay.from_host(
                    types.JSONRPCRequest(jsonrpc="2.0", id="c", method="tools/call", params=call)
                )
                await _until(lambda: seen["started"] == 1, "the VSM runs the tool")
                cancel = {"requestId": "c", "reason": "the user gave up"}
                await relay.from_host(
                    types.JSONRPCNotification(
                        jsonrpc="2.0", method="notifications/cancelled", params=cancel
                    )
                )
                await _until(lambda: seen["cancelled"] == 1, "the VSM's handler is cancelled")
                await vsm.settle(5.0)  # returns once nothing is waiting for an answer
                with pytest.raises(anyio.WouldBlock):  # and nothing was said of "c"
                    from_bridge.receive_nowait()
                tg.cancel_scope.cancel()

    run(main())


class _Wire:
    """A link that keeps what is published and answers nothing."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        self.sent.append(Envelope.decode(body, 1 << 20).body)

    async def listen(self, correlation_id: str, listener: Any) -> None:
        return None

    def unlisten(self, correlation_id: str) -> None:
        return None


def _from_vsm(sid: str, message: dict[str, Any]) -> bytes:
    body = {"session": sid, "message": message}
    return Envelope(type=wire.ENVELOPE_TYPE, sender="0123456789ab", body=body).encode()


def test_what_a_vsm_sends_unasked_is_bounded_on_the_client() -> None:
    async def main() -> None:
        link = _Wire()
        gate = asyncio.Event()

        async def stuck(*_args: Any) -> Any:
            await gate.wait()
            return {}

        async with ClientDispatcher(link, "down.root", "VSM root", "tester") as d:
            d._on_request, d._on_notify = stuck, stuck
            note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
            for _ in range(INBOUND + 5):
                await d.on_message(_from_vsm(d.sid, note))
            assert d.dropped == 5  # the first INBOUND wait for the handler; the rest are gone
            ask = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
            await d.on_message(_from_vsm(d.sid, ask))
            [refusal] = [b["message"] for b in link.sent if "message" in b]
            assert refusal["id"] == 9 and refusal["error"]["code"] == wire.BUSY
            gate.set()
            await _until(lambda: not d._inbound, "the handlers to finish")
            await d.on_message(_from_vsm(d.sid, ask))  # room again: answered by its handler
            await _until(lambda: len(link.sent) == 2, "the ping's answer")
            assert link.sent[-1]["message"] == {"jsonrpc": "2.0", "id": 9, "result": {}}

    run(main())


def test_notifications_a_vsm_cannot_keep_up_with_are_dropped() -> None:
    async def main() -> None:
        sent: list[dict[str, Any]] = []
        gate = asyncio.Event()

        async def publish(message: dict[str, Any]) -> None:
            sent.append(message)

        async def stuck(*_args: Any) -> Any:
            await gate.wait()

        d = SessionDispatcher(publish, limit=3)
        d.bind(stuck, stuck)
        note = wire.parse({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
        assert all(d.receive(note) for _ in range(10))  # never refused: dropped
        assert d.dropped == 7
        gate.set()
        d.close()

    run(main())


def test_an_answer_json_cannot_carry_becomes_an_error_answer() -> None:
    async def main() -> None:
        sent: list[dict[str, Any]] = []

        async def publish(message: dict[str, Any]) -> None:
            orjson.dumps(message)  # as the host's envelope does: a set is no JSON
            sent.append(message)

        async def odd(*_args: Any) -> Any:
            return {"x": {1, 2}}

        d = SessionDispatcher(publish, limit=4)
        d.bind(odd, odd)
        d.receive(wire.parse({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}))
        await _until(lambda: bool(sent), "an answer")
        [answer] = sent
        assert answer["id"] == 1 and answer["error"]["code"] == INTERNAL_ERROR
        assert "cannot be encoded as JSON" in answer["error"]["message"]

    run(main())


def test_a_malformed_error_answer_fails_the_call_that_waited_for_it() -> None:
    async def main() -> None:
        sent: list[dict[str, Any]] = []

        async def publish(message: dict[str, Any]) -> None:
            sent.append(message)

        d = SessionDispatcher(publish, limit=4)
        ping = asyncio.ensure_future(d.send_raw_request("ping", None))
        await _until(lambda: bool(sent), "the ping to go out")
        bad = {"jsonrpc": "2.0", "id": sent[0]["id"], "error": {"code": 5, "message": 7}}
        d.receive(wire.parse(bad))  # the message must be a string: no ErrorData
        with pytest.raises(MCPError) as failed:
            await ping
        assert "a malformed error answer" in failed.value.message

    run(main())


def test_a_progress_notice_with_a_token_of_any_shape_is_no_failure() -> None:
    async def main() -> None:
        heard: list[str] = []

        async def note(_dctx: Any, method: str, _params: Any) -> None:
            heard.append(method)

        async with ClientDispatcher(_Wire(), "down.root", "VSM root", "tester") as d:
            d._on_notify = note
            odd = {"progressToken": {"a": 1}, "progress": 1}
            message = {"jsonrpc": "2.0", "method": "notifications/progress", "params": odd}
            await d.on_message(_from_vsm(d.sid, message))  # raises nothing
            await _until(lambda: heard == ["notifications/progress"], "the notice handled")

    run(main())
