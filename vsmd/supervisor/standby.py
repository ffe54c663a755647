"""A standby: one child the fork server forks ahead of the next spawn, while it has nothing else
to do, so that a spawn hands it the VSM's spec instead of forking then.

What a fork and a child's first steps cost (copying the page tables of a 75 MiB process, the
new session, the death signal, the output pipe), and in cooperative mode the AMQP handshake
and its first channel, no longer lie between a spawn request and the VSM's ready report: the
standby starts the event loop the VSM will run on and connects with the daemon's broker URL
(preconnect), then waits for its spec on that loop, serving the connection's heartbeats.
Everything that depends on the VSM (its cgroups, rlimits, uid, then the runtime, its inbox and
the agent) is still done after the spec arrives, as in a child forked for it: the standby runs
no code but the fork server's and the connection's until then. In secure mode a VSM connects
with a token of its own, which a standby cannot hold before it is that VSM: it does not
connect ahead there.

The spec travels over a pipe of its own, written whole and then closed: the standby reads to
end of file. A standby the fork server gives up on is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import time
from dataclasses import dataclass

TITLE = "vsmd standby"  # what ps shows until a spawn takes it
WRITE_TIMEOUT = 5.0  # a standby that does not read its spec for this long is given up


@dataclass(frozen=True)
class Settings:
    """What a VSM inherits from the fork server at its fork, beyond the code: a standby made
    under other settings than a spawn asks for is not used for it."""

    gc_freeze: bool
    merging: bool
    url: str | None = None  # the broker URL to connect to ahead; None: not ahead (secure mode)
    loop: str = "uvloop"  # the event loop kind (config.EVENT_LOOPS)


@dataclass
class Standby:
    pid: int
    spec_w: int  # the fork server's end of the spec pipe
    out_r: int  # the read end of the child's stdout and stderr, for the daemon
    settings: Settings

    def hand_over(self, spec: bytes, timeout: float = WRITE_TIMEOUT) -> bool:
        """Write the whole spec and close the pipe. False if the standby is gone or did not
        read it within ``timeout`` (the caller kills it and forks instead)."""
        try:
            _write_all(self.spec_w, spec, timeout)
        except OSError:  # EPIPE: it died before it could read
            return False
        finally:
            self.close_spec()
        return True

    def close_spec(self) -> None:
        if self.spec_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self.spec_w)
            self.spec_w = -1

    def close(self) -> None:
        """Both of our ends: a standby given up on reads end of file and exits."""
        self.close_spec()
        if self.out_r >= 0:
            with contextlib.suppress(OSError):
                os.close(self.out_r)
            self.out_r = -1


def _write_all(fd: int, data: bytes, timeout: float) -> None:
    # Non-blocking with a deadline: a spec larger than the pipe's buffer needs the standby to
    # read as we write, and a standby stopped by someone must not stop the fork server.
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the standby did not read its spec")
        _, writable, _ = select.select([], [fd], [], left)
        if writable:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue


def receive(fd: int) -> bytes:
    """The standby's side: block until the whole spec is there (end of file); b"" when the
    fork server gave this standby up."""
    parts: list[bytes] = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    os.close(fd)
    return b"".join(parts)


async def receive_here(fd: int) -> bytes:
    """The same on the running loop, which meanwhile serves the connection made ahead (its
    heartbeats)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    parts: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                await _readable(loop, fd)
                continue
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
    finally:
        os.close(fd)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
