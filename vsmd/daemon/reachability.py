"""Which running VSMs the bus can reach, for a VSM whose process lives but whose connection is cut.

A VSM's inbox is exclusive: it exists exactly while the VSM's connection does. Once a probe
period (:func:`probe_period`) the daemon publishes one small mandatory probe to each running
VSM's inbox (the runtime ignores probes). The broker returns a probe that no inbox took: that VSM is
``unreachable``. It is reachable again when it speaks (its re-sync after a reconnect, any state
message) or when a probe of the last round was not returned. One publish per VSM per round and
no round trip: the daemon's loop never waits for an answer.

The daemon probes in slices spread over the period (as it samples), so a round over thousands
of VSMs never holds its loop for thousands of publishes at once. Each VSM stays in one slice, so
it is still probed once per period and its probe has the whole period to come back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vsmd.daemon.events import EventLog
from vsmd.daemon.registry import Registry, Status, VsmRecord

SendProbe = Callable[[VsmRecord, str], bool]  # (record, correlation id) -> sent
Notify = Callable[[VsmRecord, str, dict[str, object]], None]
# After the daemon's own reconnect, every VSM is reconnecting too (within its backoff, at most
# 5 s): a missing inbox then is the broker outage's, not a partition of that VSM.
RECONNECT_GRACE = 10.0


def probe_period(interval: float, rate: float, vsms: int) -> float:
    """Seconds between two probes of one VSM: ``interval``, or longer where ``vsms`` probed
    that often would take more than ``rate`` probes a second.

    Each probe wakes its VSM and costs the broker a delivery and an ack, whether or not
    anything is wrong: with 2,000 idle VSMs probed every 5 s the probes took about as much CPU
    as everything else the daemon, the broker and the VSMs did (docs/operations.md). Past
    ``rate * interval`` VSMs the cost stays flat and detection takes longer instead.
    """
    return max(interval, vsms / rate)


class Reachability:
    def __init__(
        self,
        registry: Registry,
        send_probe: SendProbe,
        events: EventLog,
        notify: Notify,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._send = send_probe
        self._events = events
        self._notify = notify
        self._clock = clock
        self._tick = 0  # one per slice probed; a probe's correlation id carries its tick
        self._pending: dict[str, int] = {}  # id -> tick of its probe still to be judged
        self._returned: set[str] = set()  # ids whose pending probe came back
        self._flagged: dict[str, str] = {}  # path -> id of the VSMs marked unreachable
        self._quiet_until = 0.0

    def hold(self, seconds: float = RECONNECT_GRACE) -> None:
        """Mark nobody unreachable for ``seconds`` (the daemon has just reconnected)."""
        self._quiet_until = self._clock() + seconds

    def probe_slice(self, part: int, parts: int) -> None:
        """For the running VSMs of slice ``part`` of ``parts``: a flagged VSM whose last probe
        went through is back; then each gets its next probe."""
        self._tick += 1
        corr_tail = f".{self._tick}"
        for rec in self._registry.in_slice(part, parts):
            sent = self._pending.pop(rec.id, None)
            went_through = sent is not None and rec.id not in self._returned
            self._returned.discard(rec.id)
            if rec.status is not Status.RUNNING:
                rec.unreachable_since = None  # a process that is gone or going is no partition
                self._flagged.pop(rec.path, None)
                continue
            if rec.unreachable_since is not None and went_through:
                self._mark(rec, reachable=True, why="its inbox took a probe")
            if self._send(rec, rec.id + corr_tail):
                self._pending[rec.id] = self._tick
        if part == 0:
            self._forget_removed()

    def _forget_removed(self) -> None:
        """Probes of VSMs that left the registry are never judged: drop them."""
        for vsm_id in [i for i in self._pending if self._registry.find(i) is None]:
            del self._pending[vsm_id]
            self._returned.discard(vsm_id)

    def on_return(self, correlation_id: str) -> None:
        """The broker returned a probe: no inbox is bound for that VSM now."""
        vsm_id, _, number = correlation_id.rpartition(".")
        if str(self._pending.get(vsm_id)) != number:
            return  # a late return of an earlier probe says nothing about now
        rec = self._registry.find(vsm_id)
        if rec is None or rec.status is not Status.RUNNING:
            return
        self._returned.add(vsm_id)
        if rec.unreachable_since is None and self._clock() >= self._quiet_until:
            self._mark(rec, reachable=False, why="its inbox is gone: no broker connection")

    def heard_from(self, path: str) -> None:
        """A message the VSM sent on its own connection: it is reachable."""
        vsm_id = self._flagged.get(path)
        rec = self._registry.find(vsm_id) if vsm_id is not None else None
        if rec is not None and rec.unreachable_since is not None:
            self._mark(rec, reachable=True, why="it spoke again")

    def _mark(self, rec: VsmRecord, reachable: bool, why: str) -> None:
        parent = self._registry.find(rec.parent) if rec.parent else None
        details: dict[str, object] = {"child": rec.id, "path": rec.path}
        if reachable:
            gone = round(self._clock() - (rec.unreachable_since or self._clock()), 3)
            rec.unreachable_since = None
            self._flagged.pop(rec.path, None)
            details["unreachable_for"] = gone
            kind, text, level = "reachable", f"reachable again after {gone} s: {why}", logging.INFO
        else:
            rec.unreachable_since = self._clock()
            self._flagged[rec.path] = rec.id
            kind, text, level = "unreachable", f"unreachable: {why}", logging.WARNING
        self._events.emit(kind, f"{rec.path}: {text}", rec.id, rec.path, level=level, pid=rec.pid)
        if parent is not None and parent.status is Status.RUNNING:
            self._notify(parent, f"child_{kind}", details)
