"""Replies remembered by idempotency key, so a retried admin command is not executed twice.

A client that lost its connection cannot know whether its request reached the daemon, was
executed, or only its reply was lost; it sends the request again with the same ``idem`` key. The
daemon answers a key it has finished with the stored reply, and attaches a repeat that arrives
while the first is still running (a spawn waits for the VSM to be ready) to the first's reply.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

Respond = Callable[[bytes], None]

MAX_KEYS = 10_000  # a retry comes within the client's timeout (60 s), far inside both bounds
KEEP_FOR = 600.0  # seconds


@dataclass
class _Entry:
    at: float
    reply: bytes | None = None
    waiters: list[Respond] = field(default_factory=list)


@dataclass
class ReplyStats:
    executed: int = 0  # first sight of a key: the command ran
    replayed: int = 0  # a repeat answered with the stored reply
    attached: int = 0  # a repeat that arrived while the first was still running

    def to_dict(self) -> dict[str, int]:
        return {"executed": self.executed, "replayed": self.replayed, "attached": self.attached}


class ReplyCache:
    """Bounded map idem -> reply: at most ``max_keys`` keys, each kept ``keep_for`` seconds."""

    def __init__(
        self,
        max_keys: int = MAX_KEYS,
        keep_for: float = KEEP_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max = max_keys
        self._keep = keep_for
        self._clock = clock
        self.stats = ReplyStats()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: str, respond: Respond) -> Respond | None:
        """None when ``key`` is known (``respond`` has its reply, or will have it with the
        first's); else the responder the command must answer through, which remembers."""
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.reply is not None:
                self.stats.replayed += 1
                respond(entry.reply)
            else:
                self.stats.attached += 1
                entry.waiters.append(respond)
            return None
        self.stats.executed += 1
        entry = _Entry(at=now, waiters=[respond])
        self._entries[key] = entry
        return lambda reply: self._finish(entry, reply)

    @staticmethod
    def _finish(entry: _Entry, reply: bytes) -> None:
        if entry.reply is not None:  # exactly one reply per request, as without a key
            return
        entry.reply = reply
        waiters, entry.waiters = entry.waiters, []
        for respond in waiters:
            respond(reply)

    def _expire(self, now: float) -> None:
        # Oldest first: insertion order is time order. An entry dropped while its command still
        # runs answers its waiters all the same (the responder holds it).
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if len(self._entries) < self._max and now - oldest.at < self._keep:
                return
            del self._entries[key]
