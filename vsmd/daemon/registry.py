"""The daemon's registry of VSMs: records, their states and the one transition function."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vsmd.daemon.policy import RestartHistory
from vsmd.daemon.timers import Timer
from vsmd.errors import NotFound
from vsmd.protocol import Policy, VsmInfo


class Status(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FAILED = "failed"


# Counted against max_total: they have, or are about to have, a process.
LIVE = frozenset({Status.STARTING, Status.RUNNING, Status.BACKOFF, Status.STOPPING})

# Every edge the lifecycle allows; anything else is a bug and raises.
_EDGES: dict[Status, frozenset[Status]] = {
    # STARTING -> RUNNING: the VSM reported ready; -> FAILED: it died or timed out first;
    # STARTING -> STOPPING: terminated while still starting; -> BACKOFF: a restart failed;
    # -> EXITED: a restart ended cleanly (exit 0) before it was ready, and stays down.
    Status.STARTING: frozenset(
        {Status.RUNNING, Status.FAILED, Status.STOPPING, Status.BACKOFF, Status.EXITED}
    ),
    # RUNNING -> STOPPING: a commanded stop; -> EXITED/FAILED: it ended on its own and stays
    # down; -> BACKOFF: it ended and its restart policy brings it back after a delay.
    Status.RUNNING: frozenset({Status.STOPPING, Status.EXITED, Status.FAILED, Status.BACKOFF}),
    # BACKOFF -> STARTING: the delay is over; -> STOPPING: terminated while waiting (no
    # process, so no restart afterwards); -> FAILED: restart intensity exceeded.
    Status.BACKOFF: frozenset({Status.STARTING, Status.STOPPING, Status.FAILED}),
    # STOPPING -> EXITED: the commanded stop finished, however it ended.
    Status.STOPPING: frozenset({Status.EXITED}),
    # EXITED/FAILED -> STARTING: restarted; -> STOPPING: terminate of a dead VSM (no process).
    Status.EXITED: frozenset({Status.STARTING, Status.STOPPING, Status.BACKOFF}),
    Status.FAILED: frozenset({Status.STARTING, Status.STOPPING, Status.BACKOFF}),
}


def transition(current: Status, new: Status) -> Status:
    if new not in _EDGES[current]:
        raise AssertionError(f"illegal VSM state change {current} -> {new}")
    return new


@dataclass
class VsmRecord:
    id: str
    name: str
    parent: str | None
    path: str
    depth: int
    agent: str
    config: dict[str, Any]
    # Changed through set_status only: the registry counts the live records as they change.
    status: Status = Status.STARTING
    pid: int | None = None
    started_at: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    children: list[str] = field(default_factory=list)
    restarts: int = 0
    last_exit: str | None = None
    last_reason: str | None = None
    policy: Policy = field(default_factory=Policy)
    forking: bool = False  # asked the fork server, no pid reported yet
    term_sent: bool = False
    timer: Timer | None = None  # spawn deadline, kill deadline or restart delay
    ever_ready: bool = False  # once it ran, a failed start is a crash, not a refused spawn
    start_requested: float = 0.0  # monotonic, when the fork was asked for
    ready_at: float | None = None  # monotonic, for the uptime that resets the backoff
    next_restart: float | None = None  # wall clock, for list/show
    force_restart: bool = False  # a quota or supervisor asked for a restart whatever the policy
    history: RestartHistory = field(default_factory=RestartHistory)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Messages per second in and out, as the VSM last reported them in its state.
    rates: dict[str, Any] = field(default_factory=dict)
    reported: str | None = None  # what the VSM said about its own failure, before exiting
    unreachable_since: float | None = None  # wall clock; running, but its inbox is gone
    refused: int = 0  # its requests the daemon refused as outside its authority
    # The dict of the policy it was made from: `list` shows the policy of every VSM, and a
    # policy changes far more rarely than it is listed.
    _policy_shown: tuple[Policy, dict[str, Any]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # The registry's, while the record is in it: told (old, new) of every status change.
    _on_status: Callable[[Status, Status], None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def set_status(self, new: Status) -> None:
        old = self.status
        self.status = transition(old, new)
        if self._on_status is not None:
            self._on_status(old, new)

    @property
    def has_process(self) -> bool:
        return self.pid is not None or self.forking

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def info(self) -> VsmInfo:
        return VsmInfo(**self.info_dict())

    def info_dict(self) -> dict[str, Any]:
        """What ``info().to_dict()`` gives, built directly: `list` of thousands of VSMs calls
        this once per VSM, and a frozen dataclass made only to be turned into a dict cost
        twice as much again."""
        return {
            "id": self.id,
            "name": self.name,
            "parent": self.parent,
            "path": self.path,
            "depth": self.depth,
            "pid": self.pid,
            "status": self._shown_status(),
            "agent": self.agent,
            "config": self.config,
            "started_at": self.started_at,
            "exit_code": self.exit_code,
            "children": list(self.children),
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_reason": self.last_reason,
            "next_restart": self.next_restart,
            "policy": self._policy_dict(),
            "metrics": {**self.metrics, **self.rates},
            "refused": self.refused,
        }

    def _policy_dict(self) -> dict[str, Any]:
        shown = self._policy_shown
        if shown is None or shown[0] is not self.policy:
            shown = self._policy_shown = (self.policy, self.policy.to_dict())
        return dict(shown[1])  # a copy: what a caller does with it never reaches the cache

    def _shown_status(self) -> str:
        # Not a lifecycle state: the process runs, only the bus cannot reach it (a partition).
        if self.status is Status.RUNNING and self.unreachable_since is not None:
            return "unreachable"
        return str(self.status)


class Registry:
    """Every VSM record, by id and by path, with the indexes a spawn consults: the top-level
    VSMs, the names under each parent and the number of live VSMs. A spawn's admission asks all
    three, and scanning every record for them cost it time in proportion to the tree (131 and
    271 us of a spawn at 3,000 VSMs for the name and the count)."""

    def __init__(self) -> None:
        self._by_id: dict[str, VsmRecord] = {}
        # Paths are bus addresses: unique even when an abandoned VSM keeps its old one.
        self._by_path: dict[str, str] = {}
        self._roots: dict[str, VsmRecord] = {}  # in the order of _by_id, as roots() lists them
        # (parent, name) -> ids: one, but an abandoned VSM keeps its name under its heir.
        self._named: dict[tuple[str | None, str], list[str]] = {}
        self._live = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, vsm_id: object) -> bool:
        return vsm_id in self._by_id

    def get(self, vsm_id: str) -> VsmRecord:
        rec = self._by_id.get(vsm_id)
        if rec is None:
            raise NotFound(f"no VSM with id {vsm_id[:64]!r}", id=vsm_id[:64])
        return rec

    def find(self, vsm_id: str) -> VsmRecord | None:
        return self._by_id.get(vsm_id)

    def add(self, rec: VsmRecord) -> None:
        self._by_id[rec.id] = rec
        self._by_path[rec.path] = rec.id
        if rec.parent is not None:
            self._by_id[rec.parent].children.append(rec.id)
        else:
            self._roots[rec.id] = rec
        self._named.setdefault((rec.parent, rec.name), []).append(rec.id)
        self._live += rec.live
        rec._on_status = self._status_changed

    def remove(self, vsm_id: str) -> VsmRecord:
        rec = self._by_id.pop(vsm_id)
        self._by_path.pop(rec.path, None)
        parent = self._by_id.get(rec.parent) if rec.parent else None
        if parent is not None and vsm_id in parent.children:
            parent.children.remove(vsm_id)
        self._roots.pop(vsm_id, None)
        self._unname(rec)
        self._live -= rec.live
        rec._on_status = None
        return rec

    def reparent(self, vsm_id: str, new_parent: str | None) -> None:
        rec = self._by_id[vsm_id]
        if rec.parent is not None and rec.parent in self._by_id:
            self._by_id[rec.parent].children.remove(vsm_id)
        self._unname(rec)
        rec.parent = new_parent
        self._named.setdefault((new_parent, rec.name), []).append(vsm_id)
        if new_parent is not None:
            self._by_id[new_parent].children.append(vsm_id)
            self._roots.pop(vsm_id, None)
        else:  # rare (an abandoned VSM whose ancestors all go): keep the roots in _by_id order
            self._roots = {i: r for i, r in self._by_id.items() if r.parent is None}
        base = 0 if new_parent is None else self._by_id[new_parent].depth
        for node in [rec, *self.descendants(vsm_id)]:
            parent_depth = base if node is rec else self._by_id[node.parent or ""].depth
            node.depth = parent_depth + 1

    def roots(self) -> list[VsmRecord]:
        return list(self._roots.values())

    def all(self) -> Iterator[VsmRecord]:
        return iter(list(self._by_id.values()))

    def in_slice(self, part: int, parts: int) -> list[VsmRecord]:
        """Slice ``part`` of ``parts``, for work the daemon spreads over an interval. By the
        id's hash: a VSM stays in its slice as others come and go."""
        return [r for r in self._by_id.values() if hash(r.id) % parts == part]

    def live_count(self) -> int:
        return self._live

    def _status_changed(self, old: Status, new: Status) -> None:
        self._live += (new in LIVE) - (old in LIVE)

    def _unname(self, rec: VsmRecord) -> None:
        key = (rec.parent, rec.name)
        ids = self._named.get(key, [])
        if rec.id in ids:
            ids.remove(rec.id)
        if not ids:
            self._named.pop(key, None)

    def subtree(self, vsm_id: str) -> list[VsmRecord]:
        """The VSM and its descendants, leaves first (post-order)."""
        out: list[VsmRecord] = []

        def walk(rec: VsmRecord) -> None:
            for child_id in list(rec.children):
                walk(self._by_id[child_id])
            out.append(rec)

        walk(self.get(vsm_id))
        return out

    def descendants(self, vsm_id: str | None) -> list[VsmRecord]:
        """Pre-order (parents before children) below ``vsm_id``, or the whole forest."""
        starts = (
            self.roots() if vsm_id is None else [self._by_id[c] for c in self.get(vsm_id).children]
        )
        out: list[VsmRecord] = []
        stack = list(reversed(starts))
        while stack:
            rec = stack.pop()
            out.append(rec)
            stack.extend(self._by_id[c] for c in reversed(rec.children))
        return out

    def path_taken(self, path: str) -> bool:
        return path in self._by_path

    def sibling_named(self, parent: str | None, name: str) -> VsmRecord | None:
        if parent is not None:
            self.get(parent)  # NOT_FOUND for an unknown parent, as before the index
        ids = self._named.get((parent, name))
        return self._by_id[ids[0]] if ids else None
