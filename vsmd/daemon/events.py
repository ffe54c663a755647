"""Supervision events: exits, restarts, quota actions, throttles, escalations.

Kept in a ring buffer for ``vsmctl events`` and published on the tree's exchange under
``event.<path>.<kind>`` for followers.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vsmd.logs import vsm_fields

log = logging.getLogger("vsmd.daemon.events")


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    vsm_id: str | None
    path: str | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Publisher = Callable[[Event], None]


class EventLog:
    def __init__(self, size: int, publish: Publisher | None = None) -> None:
        self._buffer: collections.deque[Event] = collections.deque(maxlen=size)
        self._seq = 0
        self._publish = publish
        # Events of each kind since the start, for the metrics endpoint.
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(
        self,
        kind: str,
        message: str,
        vsm_id: str | None = None,
        path: str | None = None,
        level: int = logging.INFO,
        **details: Any,
    ) -> Event:
        self._seq += 1
        event = Event(self._seq, kind, vsm_id, path, message, details)
        self._buffer.append(event)
        self.counts[kind] += 1
        log.log(level, "%s: %s", kind, message, extra={"event": kind, **vsm_fields(vsm_id, path)})
        if self._publish is not None:
            self._publish(event)
        return event

    def since(self, seq: int, limit: int) -> list[Event]:
        return [e for e in self._buffer if e.seq > seq][:limit]

    @property
    def last_seq(self) -> int:
        return self._seq
