"""JSON-RPC inside the bus envelope: how an MCP message travels between a client and a VSM.

Client to VSM: an envelope of type ``mcp`` on the VSM's key (``vsm.<id>`` or ``down.<path>``),
body ``{"session": <id>, "message": <JSON-RPC>}``, reply_to the client's reply address,
correlation id the session id. VSM to client: the same envelope shape, published to that reply
address with the session id as correlation id.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from vsmd.errors import ProtocolError, Unreachable

ENVELOPE_TYPE = "mcp"
MAX_SESSION_ID = 64

# Implementation-defined JSON-RPC codes (the band -32000..-32019 is ours to use). -32000 and
# -32001 are the SDK's own (connection closed, timeout); ours start above them.
UNREACHABLE = -32010  # no VSM at the address, or it went down before it answered
UNAUTHORIZED = -32011  # the caller has no authority for this over this VSM
BUSY = -32012  # the session runs as many requests as it may: slow down
SESSION_UNKNOWN = -32013  # this VSM holds no such session (it restarted): initialize again
BROKER_LOST = -32014  # the connection to the broker dropped while the request was out

REPLY_TO = "amq.rabbitmq.reply-to"  # clients take answers on the broker's direct reply-to


class Listener(Protocol):
    async def on_message(self, body: bytes) -> None: ...

    async def on_lost(self) -> None: ...

    async def on_returned(self, error: Unreachable) -> None:
        """A mandatory message of this listener's came back: nobody is bound to its key."""


class Link(Protocol):
    """A broker connection a client session rides on (a VSM's own, or a stand-alone one)."""

    async def send(
        self,
        key: str,
        body: bytes,
        *,
        reply_to: str | None,
        correlation_id: str | None,
        mandatory: bool,
    ) -> None:
        """Publish on the tree's exchange. When mandatory and nobody is bound: Unreachable
        here (a confirming link), or later the listener's ``on_returned`` (a VSM's own)."""

    def listen(self, correlation_id: str, listener: Listener) -> Awaitable[None]:
        """Deliver replies with this correlation id to ``listener`` from now on."""

    def unlisten(self, correlation_id: str) -> None: ...


def to_wire(message: SessionMessage) -> dict[str, Any]:
    dumped: dict[str, Any] = message.message.model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    return dumped


def from_wire(raw: Any) -> SessionMessage:
    """A JSON-RPC message from an envelope's body; ProtocolError when it is not one."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_python(raw, by_name=False))
    except ValidationError as exc:
        errors = exc.errors()
        why = f"{'.'.join(str(p) for p in errors[0]['loc'])} {errors[0]['msg']}" if errors else ""
        raise ProtocolError(f"not a JSON-RPC 2.0 message: {why}") from None


@dataclass(frozen=True, slots=True)
class Inbound:
    """A JSON-RPC message as a VSM's session takes it: ``kind`` is request, notification,
    result or error. Only its shape is checked here; the SDK validates a request's params."""

    kind: str
    id: str | int | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def _bad(why: str) -> ProtocolError:
    return ProtocolError(f"not a JSON-RPC 2.0 message: {why}")


def parse(raw: Any) -> Inbound:
    """The message in an envelope's body; ProtocolError (said as JSON-RPC's invalid request)
    when it is no JSON-RPC 2.0 message."""
    if not isinstance(raw, dict):
        raise _bad("an object is needed")
    if raw.get("jsonrpc") != "2.0":
        raise _bad("jsonrpc must be '2.0'")
    params = raw.get("params")
    if params is not None and not isinstance(params, dict):
        raise _bad("params must be an object")
    rid = request_id(raw)
    if "id" in raw and rid is None and not ("error" in raw and raw["id"] is None):
        raise _bad("id must be a string or an integer")
    if "method" in raw:
        method = raw["method"]
        if not isinstance(method, str):
            raise _bad("method must be a string")
        if "id" in raw:
            return Inbound("request", rid, method, params)
        return Inbound("notification", None, method, params)
    return _answer(raw, rid)


def _answer(raw: dict[str, Any], rid: str | int | None) -> Inbound:
    if "result" in raw and rid is not None:
        result = raw["result"]
        if not isinstance(result, dict):
            raise _bad("result must be an object")
        return Inbound("result", rid, result=result)
    if "error" in raw and "id" in raw:
        err = raw["error"]
        if not (isinstance(err, dict) and isinstance(err.get("code"), int) and "message" in err):
            raise _bad("error must be an object with a code and a message")
        return Inbound("error", rid, error=err)
    raise _bad("neither a request, a notification nor an answer")


def request_id(raw: Any) -> Any:
    """The id of a (perhaps malformed) JSON-RPC request, for its error: None when unknown."""
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, str | int) and not isinstance(rid, bool):
            return rid
    return None


def error(rid: Any, code: int, message: str, data: Any = None) -> SessionMessage:
    return SessionMessage(
        types.JSONRPCError(
            jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message, data=data)
        )
    )


def is_request(message: SessionMessage) -> bool:
    return isinstance(message.message, types.JSONRPCRequest)
