"""A VSM's message counts in and out, for the rates it reports in its state (vsmctl top).

The reporter looks at the counts every 3.75 to 6.25 seconds (runtime.rate_window, by the VSM's
id) while messages flow. Once it has reported zero both ways it parks until the next message
instead of waking on a timer: with thousands of idle VSMs on a machine, a timer each would be
thousands of wake-ups for nothing.
"""

from __future__ import annotations

import asyncio


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
