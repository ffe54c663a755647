"""Accounting of refused requests: counted per VSM, logged with who tried what, raised as an
``unauthorized`` event, and, with ``on_violation = "terminate"``, the end of a VSM that keeps
trying. Only refusals the daemon itself judged by a broker-checked user_id count here, so one
VSM cannot get another terminated by reporting it."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from vsmd.daemon.events import EventLog
from vsmd.daemon.registry import Registry, VsmRecord
from vsmd.security.identity import vsm_id_of

log = logging.getLogger("vsmd.trust")
WINDOW = 60.0  # seconds over which violation_limit counts
LOUD = 10  # refusals of one VSM logged one by one


class Violations:
    def __init__(
        self,
        registry: Registry,
        events: EventLog,
        limit: int,
        action: str,
        terminate: Callable[[str, str], None],
    ) -> None:
        self._registry = registry
        self._events = events
        self._limit = limit
        self._action = action
        self._terminate = terminate
        self._recent: dict[str, collections.deque[float]] = {}
        self.total: collections.Counter[str] = collections.Counter()  # by role, for metrics

    def refused(self, user: str | None, what: str, why: str) -> None:
        vsm_id = vsm_id_of(user)
        rec = self._registry.find(vsm_id) if vsm_id else None
        who = rec.path if rec is not None else (user or "an unnamed client")
        self.total["vsm" if vsm_id else "client"] += 1
        if rec is not None:
            rec.refused += 1
        if self._quiet(rec.refused if rec is not None else 0):
            self._act(rec)
            return
        more = f" ({rec.refused} refusals so far)" if rec is not None and rec.refused > 1 else ""
        message = f"{who} ({user or 'no user'}) tried {what}: refused: {why}{more}"
        self._events.emit(
            "unauthorized",
            message,
            rec.id if rec is not None else None,
            rec.path if rec is not None else None,
            level=logging.WARNING,
            user=user,
            what=what,
        )
        self._act(rec)

    @staticmethod
    def _quiet(count: int) -> bool:
        """Every refusal is counted; a VSM's first ten and then every hundredth are also
        logged and raised, so 10,000 forbidden declares do not flood the log and the events."""
        return count > LOUD and count % 100 != 0

    def _act(self, rec: VsmRecord | None) -> None:
        if rec is None:
            return
        now = time.monotonic()
        # Bounded: only whether more than the limit fell within the window matters.
        recent = self._recent.setdefault(rec.id, collections.deque(maxlen=self._limit + 1))
        recent.append(now)
        while recent and recent[0] < now - WINDOW:
            recent.popleft()
        if self._action == "terminate" and len(recent) > self._limit and rec.live:
            self._recent.pop(rec.id, None)
            reason = f"terminated: {len(recent)} refused requests within {WINDOW:g} s"
            log.warning("%s: %s (on_violation = terminate)", rec.path, reason)
            self._terminate(rec.id, reason)

    def forget(self, vsm_id: str) -> None:
        self._recent.pop(vsm_id, None)
