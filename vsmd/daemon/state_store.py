"""The daemon's replica of every VSM's state: journaled in batches, served to restarted VSMs,
shown to operators, and the source of policy that flows down.

Runs on the daemon's loop thread. VSMs send deltas (``up.<path>.state``); at most every
``WRITE_EVERY`` seconds the changed states go to the journal in one transaction, and the VSMs
waiting in ``flush`` get their answer after that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from vsmd.daemon.journal import Journal
from vsmd.daemon.registry import Registry, VsmRecord
from vsmd.errors import JournalUnavailable, ProtocolError, VsmdError
from vsmd.protocol import Envelope, check_policy_value, dumps, loads_object, ok_reply
from vsmd.state import (
    Clock,
    Entry,
    Key,
    StateMap,
    decode,
    effective_policy,
    encode,
    entry_bytes,
    from_entry_bytes,
)

# What a VSM reports of its traffic (vsmd/vsm/state.py `rates`).
RATE_KEYS = (("metrics", "msg_in"), ("metrics", "msg_out"))
_NONE = object()  # a key the state does not have (None is a value it may have)

log = logging.getLogger("vsmd.state")

WRITE_EVERY = 0.1  # seconds: how far the journal may be behind the VSMs
SPEC_STATE_MAX = 64 << 10  # bytes of state carried in a spawn spec (the fork server's packet)
Publish = Callable[[str, bytes], None]  # routing key, body (on the tree's exchange)
Respond = Callable[[bytes], None]


class StateStore:
    def __init__(
        self, registry: Registry, journal: Journal | None, publish: Publish, limit: int
    ) -> None:
        self.registry = registry
        self.journal = journal
        self._publish = publish
        self.limit = limit
        self.states: dict[str, StateMap] = {}
        self.clock = Clock("vsmd")
        self._dirty: dict[str, set[Key]] = {}  # keys changed since the journal's last write
        self._waiting: list[Respond] = []

    def load(self) -> int:
        """The states journaled before a restart; returns how many."""
        if self.journal is None:
            return 0
        snapshots, rows = self.journal.load_states()
        for vsm_id in {*snapshots, *rows}:
            try:
                # A journal of before holds a state whole; entries written since are newer.
                if vsm_id in snapshots:
                    self.of(vsm_id).apply(decode(loads_object(snapshots[vsm_id], 1 << 30))[0])
                if vsm_id in rows:
                    self.of(vsm_id).apply(from_entry_bytes(rows[vsm_id], 1 << 30))
            except VsmdError as err:
                log.warning("journaled state of %s is unreadable: %s", vsm_id, err.message)
                self.states.pop(vsm_id, None)
        return len(self.states)

    def of(self, vsm_id: str) -> StateMap:
        return self.states.setdefault(vsm_id, StateMap())

    def forget(self, vsm_id: str) -> None:
        """The VSM is gone for good (the journal deletes its state with its entry)."""
        self.states.pop(vsm_id, None)
        self._dirty.pop(vsm_id, None)

    # --- from VSMs -------------------------------------------------------------------------

    def on_state(self, rec: VsmRecord, body: dict[str, Any]) -> None:
        entries, _ = decode(body)
        for e in entries.values():
            self.clock.observe(e.version)
        changed = self.of(rec.id).apply(entries)
        if changed:
            self._dirty.setdefault(rec.id, set()).update(changed)
        if any(k in RATE_KEYS for k in changed):  # for list and top, next to rss and cpu
            state = self.of(rec.id)
            rates = {name: state.value(s, name, _NONE) for s, name in RATE_KEYS}
            rec.rates = {name: v for name, v in rates.items() if v is not _NONE}

    def on_flush(self, respond: Respond) -> None:
        if self._dirty:
            self._waiting.append(respond)
        else:
            respond(ok_reply({"flushed": True}))

    def snapshot_for(self, rec: VsmRecord, children: bool = True) -> dict[str, Any]:
        """What a (re)started VSM needs: its own state, its ancestors' policy, its children's."""
        layers = {}
        node = rec
        while node.parent is not None:
            node = self.registry.get(node.parent)
            policy = {k: e for k, e in self.of(node.id).entries.items() if k[0] == "policy"}
            layers[node.id] = encode(policy)
        out = {"own": encode(self.of(rec.id).entries), "layers": layers}
        if children:
            out["children"] = {
                c: encode(self.of(c).entries) for c in rec.children if c in self.states
            }
        return out

    def initial_state(self, rec: VsmRecord) -> tuple[dict[str, Any], bool]:
        """The state a VSM is started with (in its spec), and whether it must still sync.

        So a new VSM has nothing to ask or send at start: no request and no publish on the
        spawn path. Children's states are fetched by the VSM (a restarted parent), and so is a
        state too big to travel in the spec."""
        snapshot = self.snapshot_for(rec, children=False)
        if len(dumps(snapshot)) > SPEC_STATE_MAX:
            return {}, True
        return snapshot, bool(rec.children)

    def write(self) -> None:
        """Journal what changed since the last write; answer the flushes waiting for it."""
        if self._dirty and self.journal is not None:
            rows = []
            for vsm_id, keys in self._dirty.items():
                entries = self.of(vsm_id).entries
                rows += [(vsm_id, *k, entry_bytes(k, entries[k])) for k in keys]
            try:
                self.journal.put_states(rows)
            except JournalUnavailable as err:
                log.warning("states not journaled: %s", err.message)
                return  # kept dirty; tried again next time
        self._dirty.clear()
        waiting, self._waiting = self._waiting, []
        for respond in waiting:
            respond(ok_reply({"flushed": True}))

    # --- for operators ---------------------------------------------------------------------

    def layers(self, rec: VsmRecord) -> list[tuple[VsmRecord, dict[str, Any]]]:
        """Policy set on each ancestor and on the VSM itself, the root first."""
        chain = [rec]
        while chain[-1].parent is not None:
            chain.append(self.registry.get(chain[-1].parent))
        return [(r, self.of(r.id).section("policy")) for r in reversed(chain)]

    def own(self, rec: VsmRecord) -> dict[str, Any]:
        return self.of(rec.id).section("policy")

    def effective(self, rec: VsmRecord) -> dict[str, Any]:
        return effective_policy(p for _r, p in self.layers(rec))

    def view(self, rec: VsmRecord) -> dict[str, Any]:
        state = self.of(rec.id).view()
        # Who it is comes from the registry, the authority on it: not replicated state.
        state["identity"] = {
            "id": rec.id,
            "name": rec.name,
            "path": rec.path,
            "depth": rec.depth,
            "parent": rec.parent,
            "purpose": str(rec.config.get("purpose", "")),
        }
        return {
            "id": rec.id,
            "path": rec.path,
            **state,
            "effective_policy": self.effective(rec),
            "children": list(rec.children),
        }

    def policy_view(self, rec: VsmRecord) -> dict[str, Any]:
        return {
            "id": rec.id,
            "path": rec.path,
            "own": self.of(rec.id).section("policy"),
            "effective": self.effective(rec),
            "layers": [{"id": r.id, "path": r.path, "policy": p} for r, p in self.layers(rec)],
        }

    def set_policy(self, vsm_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Set policy keys on a VSM; it and every descendant hear of it at once."""
        rec = self.registry.get(vsm_id)
        if not values:
            raise ProtocolError("policy set: no KEY=VALUE given", field="values")
        checked = {k: check_policy_value(k, v) for k, v in values.items()}
        delta = {("policy", k): Entry(v, self.clock.tick(), v is None) for k, v in checked.items()}
        self.of(rec.id).apply(delta)
        self._dirty.setdefault(rec.id, set()).update(delta)
        env = Envelope(type="policy", sender="vsmd", body={**encode(delta), "origin": rec.id})
        raw = env.encode()
        self._publish(f"vsm.{rec.id}", raw)
        self._publish(f"sub.{rec.id}", raw)
        return self.policy_view(rec)
