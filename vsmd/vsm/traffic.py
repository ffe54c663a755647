"""A VSM's message counts in and out, for the rates it reports in its state (vsmctl top).

The reporter looks at the counts every 3.75 to 6.25 seconds (runtime.rate_window, by the VSM's
id) while messages flow, and writes the rates only when they moved (``moved``): each write is a
state delta to the parent and the daemon, and a steady flow would otherwise write one every
window for a count that differs by a message. Once it has reported zero both ways it parks
until the next message instead of waking on a timer: with thousands of idle VSMs on a machine,
a timer each would be thousands of wake-ups for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

# A rate is written again when it moved by more than this share of what is shown, or by more
# than one message per window, whichever is more: counts of a steady flow differ from one
# window to the next by a message or two.
DEADBAND = 0.1


def moved(shown: Sequence[float], now: Sequence[float], window: float) -> bool:
    """Whether the rates ``now`` (messages per second over ``window`` seconds) are worth a
    state write over those ``shown``: one of them started or stopped, or moved by more than
    the dead band."""
    for old, new in zip(shown, now, strict=True):
        if (old == 0) != (new == 0):
            return True
        if abs(new - old) > max(DEADBAND * old, 1.0 / window) + 1e-9:
            return True
    return False


class Traffic:
    def __init__(self) -> None:
        self.received = 0  # inbox messages (the daemon's probes are not counted)
        self.sent = 0  # messages published for the agent or as replies
        self._parked: asyncio.Event | None = None

    def count_in(self) -> None:
        self.received += 1
        self._wake()

    def count_out(self) -> None:
        self.sent += 1
        self._wake()

    def _wake(self) -> None:
        if self._parked is not None:
            self._parked.set()

    async def until_next(self) -> None:
        """Returns at the next message in or out."""
        self._parked = asyncio.Event()
        try:
            await self._parked.wait()
        finally:
            self._parked = None
