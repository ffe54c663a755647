"""What VSMs (and the fork server) write to stdout and stderr, into the daemon's log.

Each VSM gets one pipe at its fork for both streams; the fork server hands the daemon the read
end with its ``spawned`` report. One thread here reads every pipe through a selector and logs
each line with the VSM's id, path and pid, so a VSM's output is never mixed raw into the
daemon's log (and a JSON log stays one object per line). Memory stays bounded: at most
``MAX_LINE`` bytes are kept per pipe, and the rest of a longer line is counted, not kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from dataclasses import dataclass, field

from vsmd.logs import OUTPUT_LOGGER, vsm_fields

log = logging.getLogger(OUTPUT_LOGGER)
MAX_LINE = 4096  # bytes of one line that reach the log
READ_SIZE = 65536  # per read: a busy pipe cannot starve the others for long


@dataclass
class Source:
    """One pipe and whose it is."""

    fd: int
    vsm_id: str | None
    path: str | None
    pid: int | None
    logger: logging.Logger
    buf: bytearray = field(default_factory=bytearray)
    cut: int = 0  # bytes of the current line beyond MAX_LINE, dropped

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return
            self._keep(data[start:end])
            self.flush()
            start = end + 1

    def _keep(self, part: bytes) -> None:
        room = MAX_LINE - len(self.buf)
        self.buf += part[:room]
        self.cut += max(0, len(part) - room)

    def flush(self) -> None:
        """Log the line gathered so far, if any."""
        if not self.buf and not self.cut:
            return
        line = self.buf.decode("utf-8", "replace").rstrip("\r")
        if self.cut:
            line += f" ... ({self.cut} more bytes cut)"
        self.buf.clear()
        self.cut = 0
        # WARNING: a VSM's runtime writes there only at WARNING and above, and what an agent
        # prints must not vanish at the default level either.
        self.logger.warning("%s", line, extra=vsm_fields(self.vsm_id, self.path, self.pid))


class OutputReader:
    """Started on the first ``add``; lives as long as the daemon (a daemon thread)."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: list[Source] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._open = 0  # pipes registered or pending, for drain()
        self._idle = threading.Condition(self._lock)

    def add(
        self,
        fd: int,
        vsm_id: str | None = None,
        path: str | None = None,
        pid: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Read ``fd`` (ours from now on: closed at its end of file) until its writers are
        gone: the VSM and whatever it started that kept the pipe."""
        os.set_blocking(fd, False)
        with self._lock:
            self._pending.append(Source(fd, vsm_id, path, pid, logger or log))
            self._open += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vsm-output", daemon=True)
                self._thread.start()
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already on its way
            os.write(self._wake_w, b"\0")

    def drain(self, timeout: float) -> bool:
        """Wait until every pipe has reached its end (its processes are gone), at most
        ``timeout`` seconds; True if all did."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._open:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            try:
                for key, _ in self._sel.select():
                    if key.data is None:
                        self._take_pending()
                    else:
                        self._read(key.data)
            except Exception:  # a bug here must not silence every VSM from now on
                logging.getLogger("vsmd").exception("internal error while reading VSM output")

    def _take_pending(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            pending, self._pending = self._pending, []
        for src in pending:
            self._sel.register(src.fd, selectors.EVENT_READ, src)

    def _read(self, src: Source) -> None:
        try:
            data = os.read(src.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            src.feed(data)
            return
        src.flush()  # a last line without its newline
        self._sel.unregister(src.fd)
        os.close(src.fd)
        with self._idle:
            self._open -= 1
            self._idle.notify_all()
