"""A VSM's state on the bus: deltas up to its parent and the daemon, flush, and the re-sync with
the daemon on every start that needs one and after every reconnect (anti-entropy).

The replica itself (what the agent reads and writes) is vsmd/vsm/state.py; this is its wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from vsmd.bus.topology import Topology
from vsmd.errors import Timeout, Unreachable, VsmdError
from vsmd.protocol import Envelope
from vsmd.spec import VsmSpec
from vsmd.vsm.bus import VsmBus
from vsmd.vsm.state import StateReplica

log = logging.getLogger("vsmd.vsm")

SYNC_RETRY_FIRST = 0.2  # s before asking a daemon that is not back yet again, then doubling
SYNC_TIMEOUT = 30.0  # for the daemon's answer to a sync or a flush

Call = Callable[[str, bytes, float], Awaitable[Any]]


def up_message(
    spec: VsmSpec, topo: Topology, kind: str, body: dict[str, Any] | None = None
) -> tuple[str, bytes]:
    """(routing key, envelope) of a message from this VSM to the daemon."""
    env = Envelope(type=kind, sender=spec.vsm_id, path=spec.path, body=body or {})
    return topo.up_key(spec.path, kind), env.encode()


class StateLink:
    def __init__(
        self,
        spec: VsmSpec,
        topo: Topology,
        bus: VsmBus,
        call: Call,
        parent: Callable[[], str | None],
    ) -> None:
        self.spec, self.topo, self.bus = spec, topo, bus
        self._call = call
        self._parent = parent  # the current parent's id: a re-parenting changes it
        self.replica = StateReplica(spec, self.send, self.flush)
        self._resync: asyncio.Task[None] | None = None

    def _up(self, kind: str, body: dict[str, Any] | None = None) -> tuple[str, bytes]:
        return up_message(self.spec, self.topo, kind, body)

    async def send(self, delta: dict[str, Any]) -> None:
        """A delta of our state to our parent's replica and the daemon's."""
        key, raw = self._up("state", delta)
        # The daemon first: then its replica of us is never behind what our parent, and the
        # parent's own updates to the daemon, already say about us. Both go out before either
        # confirm is awaited; the channel keeps their order.
        keys = [key]
        parent = self._parent()
        if parent is not None:
            keys.append(self.topo.to_parent_key(parent, self.spec.vsm_id))
        await self.bus.publish_each(keys, raw)

    async def flush(self) -> None:
        """Once the replica has sent what was written: returns when the daemon journaled it."""
        resync = self._resync
        if resync is not None and not resync.done():
            # What was written while the broker was away reaches the daemon only with the
            # re-sync's snapshot: the flush waits for it, then for that snapshot's delivery.
            # wait, not await: a re-sync cancelled by a newer reconnect is no cancellation of
            # the flush, which then waits for the newer one.
            await asyncio.wait({resync})
            await self.replica.flush()
            return
        await self._call(*self._up("flush"), SYNC_TIMEOUT)

    async def initial(self) -> None:
        """The state the daemon put in our spec; a sync only when it says so."""
        if self.spec.state:
            self.replica.restore(self.spec.state)
        if self.spec.sync:
            await self.sync()

    def reconnected(self) -> None:
        """A new connection: re-sync in the background (what is under way was for the old)."""
        if self._resync is not None:
            self._resync.cancel()
        self._resync = asyncio.get_running_loop().create_task(self.sync(until_heard=True))

    async def sync(self, until_heard: bool = False) -> None:
        """Anti-entropy: take what the daemon journaled, send ours.

        After a reconnect (``until_heard``) the daemon may not be back on the broker yet (its
        queue is gone with a restarted broker): we ask again with backoff until it answers,
        because what we send before it is back never reaches its replica."""
        backoff = SYNC_RETRY_FIRST
        while True:
            try:
                snapshot = await self._call(*self._up("sync"), SYNC_TIMEOUT)
                if isinstance(snapshot, dict):
                    self.replica.restore(snapshot)
                break
            except VsmdError as err:
                absent = isinstance(err, Unreachable | Timeout)  # no daemon queue, or no answer
                if not (absent and until_heard and self.bus.connected):
                    log.warning("vsm %s: no state from the daemon: %s", self.spec.vsm_id, err)
                    break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.spec.reconnect_max_backoff)
        self.replica.publish_all()
