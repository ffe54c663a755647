"""A VSM's own state, its replicas of its children's, and the policy layers from above.

Changes go up at once (to the parent's replica and the daemon's, one delta per loop turn);
policy comes down from the daemon; on every (re)connect the VSM asks the daemon for what it
last journaled, so a restarted VSM has its state back and lost messages heal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vsmd.errors import ProtocolError, TooLarge, Unauthorized
from vsmd.protocol import dumps
from vsmd.spec import VsmSpec
from vsmd.state import Clock, Entry, Key, StateMap, decode, effective_policy, encode

log = logging.getLogger("vsmd.vsm")

HEALTH = ("ok", "degraded", "failing")  # worst last
Send = Callable[[dict[str, Any]], Awaitable[None]]


class StateReplica:
    """Implements ``ctx.state`` for async agents; every method runs on the VSM's loop."""

    def __init__(self, spec: VsmSpec, send: Send, flush: Callable[[], Awaitable[None]]) -> None:
        self.spec = spec
        self.clock = Clock(spec.vsm_id)
        self.own = StateMap()
        self.children: dict[str, StateMap] = {}
        self.layers: dict[str, StateMap] = {}  # policy set on each ancestor, by its id
        self._send = send
        self._flush = flush
        self._pending: dict[Key, Entry] = {}
        self.max_value = spec.max_message_bytes // 2
        self._publishing: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] | None = None  # MCP subscribers of the state resource

    # --- the agent's API -------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.own.value("data", key, default)

    def data(self) -> dict[str, Any]:
        return self.own.section("data")

    def _may(self, capability: str) -> None:
        if capability not in self.spec.capabilities:
            raise Unauthorized(f"VSM {self.spec.path} was not granted the {capability} capability")

    def set(self, key: str, value: Any) -> None:
        self._may("state")
        self._write("data", key, value)

    def delete(self, key: str) -> None:
        self._may("state")
        self._write("data", key, None, deleted=True)

    def gauge(self, name: str, value: float) -> None:
        self._may("metrics")
        self._write("metrics", f"g.{name}", value)

    def count(self, name: str, n: int = 1) -> None:
        self._may("metrics")
        current = self.own.value("metrics", f"c.{name}", 0)
        self._write("metrics", f"c.{name}", current + n)

    def health(self, status: str) -> None:
        self._may("metrics")
        if status not in HEALTH:
            raise ProtocolError(f"health must be one of {', '.join(HEALTH)}")
        self._write("metrics", "health", status)

    @property
    def policy(self) -> dict[str, Any]:
        """The effective policy: every ancestor's, tightened by this VSM's own."""
        layers = [self.layers[a].section("policy") for a in self.spec.ancestors if a in self.layers]
        return effective_policy([*layers, self.own.section("policy")])

    def set_policy(self, key: str, value: Any) -> None:
        """Tighten this VSM's own policy (it can never loosen what came from above)."""
        self._may("state")
        self._write("policy", key, value)

    def rates(self, msg_in: float, msg_out: float) -> None:
        """The runtime's own traffic figures (messages per second), next to ``health``."""
        self._write("metrics", "msg_in", msg_in)
        self._write("metrics", "msg_out", msg_out)

    def child_states(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {cid: m.view() for cid, m in self.children.items()}

    def child_get(self, child_id: str, key: str, default: Any = None) -> Any:
        """One data key of one child's replica, without copying every child's state."""
        m = self.children.get(child_id)
        return default if m is None else m.value("data", key, default)

    async def flush(self) -> None:
        """Returns once the daemon has journaled everything written before."""
        task = self._publishing
        if task is not None and not task.done():
            # wait, not await: a send that ended by cancellation (the VSM stopping under it)
            # must not look like a cancellation of the agent that flushes.
            await asyncio.wait({task})
        await self._flush()

    # --- writing and publishing ------------------------------------------------------------

    def _write(self, section: str, key: str, value: Any, deleted: bool = False) -> None:
        if not isinstance(key, str) or not key or len(key) > 200:
            raise ProtocolError("a state key is a string of 1-200 characters")
        try:
            size = len(dumps(value))
        except TypeError as exc:  # orjson's JSONEncodeError: a set, an object, a deep nest
            raise ProtocolError(f"state value {section}.{key} is not JSON: {exc}") from None
        if size > self.max_value:
            raise TooLarge(
                f"state value {section}.{key} of {size} bytes is over {self.max_value} bytes "
                "(half of max_message_bytes, so that every update fits in a message)"
            )
        changed = self.own.apply({(section, key): Entry(value, self.clock.tick(), deleted)})
        self._queue(changed)
        if section == "metrics" and key != "subtree":
            self._summarize()

    def _queue(self, changed: Mapping[Key, Entry]) -> None:
        if not changed:
            return
        if self.on_change is not None:
            self.on_change()
        self._pending.update(changed)
        if self._publishing is None or self._publishing.done():
            # One delta per loop turn: writes made together travel together.
            self._publishing = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        # The task's first step comes after whatever runs in this turn of the loop already:
        # writes made there travel in one delta without a further turn's wait.
        while self._pending:
            delta, self._pending = self._pending, {}
            try:
                for chunk in self._chunks(delta):
                    await self._send(encode(chunk))
            except Exception as exc:  # a lost broker: the snapshot on reconnect heals it
                # Dropped, not kept: the re-sync sends the whole state. What was queued
                # meanwhile may be that re-sync's, on a new connection: it is tried next.
                log.info("vsm %s: state update not sent: %s", self.spec.vsm_id, exc)

    def _chunks(self, delta: Mapping[Key, Entry]) -> list[dict[Key, Entry]]:
        """Deltas that each fit in one message (every value fits in half of one)."""
        if len(delta) == 1:
            return [dict(delta)]  # one value: it fits (the write checked it), no sizing
        out: list[dict[Key, Entry]] = [{}]
        size = 0
        for key, entry in delta.items():
            n = len(dumps(entry.to_dict(*key))) + 1
            if out[-1] and size + n > self.max_value:
                out.append({})
                size = 0
            out[-1][key] = entry
            size += n
        return out

    def publish_all(self) -> None:
        """Send the whole own state (after a (re)connect: anti-entropy)."""
        self._queue(dict(self.own.entries))

    # --- what arrives ----------------------------------------------------------------------

    def restore(self, snapshot: dict[str, Any]) -> None:
        """What the daemon journaled: own state, ancestors' policy, children's states."""
        own, _ = decode(snapshot.get("own") or {"schema": 1, "entries": []})
        self._observe(own)
        self.own.apply(own)
        for origin, raw in (snapshot.get("layers") or {}).items():
            self.apply_policy(origin, raw)
        for cid, raw in (snapshot.get("children") or {}).items():
            entries, _ = decode(raw)
            self.children.setdefault(cid, StateMap()).apply(entries)
        self._summarize()

    def apply_child(self, child_id: str, raw: Any) -> None:
        entries, _ = decode(raw)
        changed = self.children.setdefault(child_id, StateMap()).apply(entries)
        # Only a child's own summary counts in ours. Summing walks every child: a parent of a
        # thousand, summing on each child's rate report, spent more CPU on that than on its
        # messages.
        if ("metrics", "subtree") in changed:
            self._summarize()
        if changed and self.on_change is not None:
            self.on_change()

    def apply_policy(self, origin: str, raw: Any) -> None:
        entries, _ = decode(raw)
        entries = {k: e for k, e in entries.items() if k[0] == "policy"}
        self._observe(entries)
        if origin == self.spec.vsm_id:
            self.own.apply(entries)
        else:
            self.layers.setdefault(origin, StateMap()).apply(entries)
        if self.on_change is not None:
            self.on_change()

    def forget_child(self, child_id: str) -> None:
        if self.children.pop(child_id, None) is not None:
            self._summarize()

    def _observe(self, entries: Mapping[Key, Entry]) -> None:
        for e in entries.values():
            self.clock.observe(e.version)

    def _summarize(self) -> None:
        """This VSM's subtree in one metric its parent sees: count, worst health, counters."""
        metrics = self.own.section("metrics")
        count, worst = 1, metrics.get("health", "ok")
        counters = {k[2:]: v for k, v in metrics.items() if k.startswith("c.") and _num(v)}
        for child in self.children.values():
            sub = child.section("metrics").get("subtree")
            if not isinstance(sub, dict):
                continue
            count += int(sub.get("count", 0)) if _num(sub.get("count")) else 0
            worst = _worse(worst, sub.get("worst_health"))
            for name, v in (sub.get("counters") or {}).items():
                if _num(v):
                    counters[name] = counters.get(name, 0) + v
        summary = {"count": count, "worst_health": worst, "counters": counters}
        if metrics.get("subtree") != summary:
            self._write("metrics", "subtree", summary)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _worse(a: Any, b: Any) -> str:
    rank = {h: i for i, h in enumerate(HEALTH)}
    first = a if a in rank else "ok"
    second = b if b in rank else "ok"
    return first if rank[first] >= rank[second] else second
