"""The MCP face of a VSM: who is calling (their authority), and the tools every VSM has.

Each tool is a thin face on an operation that exists without MCP: the same daemon requests
(spawn, list, terminate, policy, each checked there to stay within this VSM's subtree) and
the same ``ctx`` calls an agent makes.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from vsmd.errors import ProtocolError
from vsmd.mcp.registry import FULL, NONE, READ, Caller, McpRegistry
from vsmd.protocol import Envelope
from vsmd.security.identity import DAEMON_USER, OPERATOR_USER, VIEWER_USER, vsm_id_of
from vsmd.vsm.calls import Delivery
from vsmd.vsm.context import SEVERITIES

if TYPE_CHECKING:
    from vsmd.vsm.runtime import VsmRuntime

EVENTS_KEPT = 200
OBJ = {"type": "object"}
STR = {"type": "string"}


def caller_of(rt: VsmRuntime, msg: Delivery, env: Envelope) -> Caller:
    """Secure mode judges by the broker-checked user_id; cooperative mode by the envelope."""
    me, ancestors = rt.spec.vsm_id, rt.bus.ancestors
    if rt.spec.token_socket:
        user = msg.user_id
        if user == DAEMON_USER:
            return Caller("vsmd", "", FULL, user)
        if user in (OPERATOR_USER, VIEWER_USER):
            return Caller(env.sender[:64], "", FULL if user == OPERATOR_USER else READ, user)
        sender = vsm_id_of(user)
        ok = sender is not None and sender == env.sender and (sender == me or sender in ancestors)
        return Caller(env.sender[:64], env.path[:1000], FULL if ok else NONE, user)
    if env.sender in ("vsmd", "vsmctl") or env.sender == me or env.sender in ancestors:
        return Caller(env.sender[:64], env.path[:1000], FULL)
    return Caller(env.sender[:64], env.path[:1000], NONE)


class Events:
    """What happened to this VSM lately, for the ``vsm://<id>/events`` resource."""

    def __init__(self, on_change: Any) -> None:
        self.items: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._seq = 0
        self._on_change = on_change

    def add(self, kind: str, text: str, **data: Any) -> None:
        self._seq += 1
        self.items.append(
            {"seq": self._seq, "time": time.time(), "kind": kind, "text": text, **data}
        )
        self._on_change()


def _str(args: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"'{name}' must be a non-empty string", field=name)
    return value


def _obj(args: dict[str, Any], name: str) -> dict[str, Any]:
    value = args.get(name) or {}
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be an object", field=name)
    return value


class BuiltinTools:
    """The tools and resources every VSM has."""

    def __init__(self, rt: VsmRuntime) -> None:
        self.rt = rt
        self.spec = rt.spec
        self.ctx = rt.ctx
        self.me = rt.spec.vsm_id
        assert rt.mcp_host is not None  # made only where the VSM serves MCP
        self.host = rt.mcp_host

    async def _ask_daemon(self, kind: str, body: dict[str, Any]) -> Any:
        env = Envelope(type=kind, sender=self.me, path=self.spec.path, body=body)
        return await self.rt.call(self.rt.topo.up_key(self.spec.path, kind), env.encode(), 60.0)

    async def status(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        rt = self.rt
        metrics = rt.state.own.section("metrics")
        return {
            "id": self.me,
            "name": self.spec.name,
            "path": self.spec.path,
            "depth": self.spec.depth,
            "parent": self.ctx.parent_id,
            "agent": self.spec.agent,
            "pid": os.getpid(),
            "uptime": round(time.time() - rt.started, 3),
            "health": metrics.get("health", "ok"),
            "subtree": metrics.get("subtree"),
            "refused": rt.refused + self.host.refused,
            "mcp_sessions": len(self.host.sessions),
            "caller": {"id": caller.id, "role": caller.role},
        }

    async def spawn_child(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, agent = _str(args, "name", False), _str(args, "agent", False)
        info = await self.ctx.spawn_child(name, agent, _obj(args, "config"), _obj(args, "policy"))
        self.rt.events.add(
            "spawned", f"{info.get('path')} by {caller.describe()}", child=info.get("id")
        )
        self.host.changed(f"vsm://{self.me}/children")
        return info

    async def list_children(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        kids = await self._ask_daemon("children", {"recursive": args.get("recursive") is True})
        return {"children": kids}

    async def terminate_child(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        target = _str(args, "id")
        result: dict[str, Any] = await self._ask_daemon("terminate", {"id": target})
        self.rt.events.add(
            "terminated", f"{target} by {caller.describe()}", ids=result.get("terminated")
        )
        self.host.changed(f"vsm://{self.me}/children")
        return result

    async def get_state(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        state = self.rt.state
        return {
            "id": self.me,
            "path": self.spec.path,
            "state": state.own.view(),
            "effective_policy": state.policy,
            "children": state.child_states(),
        }

    async def set_policy(self, args: dict[str, Any], caller: Caller) -> Any:
        values = _obj(args, "values")
        result = await self._ask_daemon("policy", {"values": values})
        self.rt.events.add("policy", f"set by {caller.describe()}", keys=sorted(values))
        return result

    async def send(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        target, kind = str(_str(args, "target")), str(_str(args, "kind"))
        await self.ctx.send(target, kind, _obj(args, "body"))
        return {"sent": True, "target": target, "kind": kind}

    async def raise_alert(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        severity = _str(args, "severity", False) or "warning"
        text = str(_str(args, "text"))
        await self.ctx.alert(severity, text, _obj(args, "data"))
        self.rt.events.add("alert", f"{severity}: {text}")
        return {"raised": True, "severity": severity}

    async def state_resource(self, caller: Caller) -> dict[str, Any]:
        return await self.get_state({}, caller)

    async def children_resource(self, caller: Caller) -> dict[str, Any]:
        return await self.list_children({}, caller)

    async def events_resource(self, caller: Caller) -> dict[str, Any]:
        return {"events": list(self.rt.events.items)}

    def register(self, reg: McpRegistry) -> None:
        reg.tool(
            "status",
            self.status,
            "This VSM: id, path, parent, agent, pid, uptime, health.",
            read_only=True,
        )
        reg.tool(
            "spawn_child",
            self.spawn_child,
            "Spawn a child of this VSM; its info once it is ready.",
            _schema(name=STR, agent=STR, config=OBJ, policy=OBJ),
        )
        reg.tool(
            "list_children",
            self.list_children,
            "This VSM's children (recursive: every descendant).",
            _schema(recursive={"type": "boolean"}),
            read_only=True,
        )
        reg.tool(
            "terminate_child",
            self.terminate_child,
            "Terminate a descendant of this VSM and its subtree.",
            _schema(["id"], id=STR),
        )
        reg.tool(
            "get_state",
            self.get_state,
            "This VSM's state, effective policy and children's states.",
            read_only=True,
        )
        reg.tool(
            "set_policy",
            self.set_policy,
            "Set policy keys on this VSM; they flow down to every descendant (tighten-only).",
            _schema(["values"], values=OBJ),
        )
        reg.tool(
            "send",
            self.send,
            "Send a message from this VSM to a VSM id, path or 'parent' (its agent's handle).",
            _schema(["target", "kind"], target=STR, kind=STR, body=OBJ),
        )
        reg.tool(
            "raise_alert",
            self.raise_alert,
            "An algedonic alert: reaches this tree's root and the daemon at once.",
            _schema(["text"], severity={"enum": list(SEVERITIES)}, text=STR, data=OBJ),
        )
        reg.resource(f"vsm://{self.me}/state", self.state_resource, "state", "This VSM's state")
        reg.resource(
            f"vsm://{self.me}/children", self.children_resource, "children", "This VSM's children"
        )
        reg.resource(
            f"vsm://{self.me}/events", self.events_resource, "events", "What happened here lately"
        )


def _schema(required: list[str] | None = None, **props: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema
