"""What the broker refused, read from the embedded node's log: the broker tells no other
connection when it refuses a VSM (403 on a queue or key, 406 on a forged user_id), so the
daemon follows the node's log to count those refusals on the VSM like its own."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("vsmd.trust")
POLL = 0.2  # s between looks at a log that has nothing new
MAX_LINE = 4096

# "operation basic.publish caused a channel exception access_refused: access to topic 'x' in
# exchange 'ns.recursive' in vhost 'vsmd' refused for user 'vsm-0123456789ab'"
_ACCESS = re.compile(
    r"operation (?P<op>[a-z_.]+) caused a channel exception (?P<code>\w+): "
    r"(?P<what>.{0,300}?) refused for user '(?P<user>vsm-[0-9a-f]{1,64})'"
)
# "... user_id property set to 'vsmd-daemon' but authenticated user was 'vsm-0123456789ab'"
_USER_ID = re.compile(
    r"user_id property set to '(?P<claimed>[^']{0,100})' but authenticated user was "
    r"'(?P<user>vsm-[0-9a-f]{1,64})'"
)


def parse(line: str) -> dict[str, Any] | None:
    """The refusal a node log line reports, or None."""
    m = _ACCESS.search(line)
    if m is not None:
        return {"user": m["user"], "what": f"{m['op']}: {m['what']}"}
    m = _USER_ID.search(line)
    if m is not None:
        return {"user": m["user"], "what": f"a message with user_id {m['claimed']!r}"}
    return None


class BrokerLogFollower:
    """Reads lines appended to ``path`` from now on; hands each refusal to ``sink`` (from its
    own thread: the sink queues it for the daemon's loop)."""

    def __init__(self, path: Path, sink: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self._sink = sink
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Where "from now on" begins is fixed here, not when the thread gets to run.
        offset = self._size()
        self._thread = threading.Thread(
            target=self._run, args=(offset,), name="broker-log", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, offset: int) -> None:
        while not self._stop.is_set():
            size = self._size()
            if size < offset:
                offset = 0  # the log was cut or replaced: read the new one from its start
            if size == offset:
                self._stop.wait(POLL)
                continue
            offset = self._read_from(offset)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _read_from(self, offset: int) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(offset)
                while True:
                    line = f.readline(MAX_LINE)
                    if not line.endswith(b"\n") and len(line) < MAX_LINE:
                        return offset  # a line still being written: read it whole next time
                    offset += len(line)
                    found = parse(line.decode(errors="replace"))
                    if found is not None:
                        with contextlib.suppress(Exception):
                            self._sink({"ev": "broker_refusal", **found})
        except OSError as exc:
            log.warning("cannot read the broker's log %s: %s", self.path, exc)
            self._stop.wait(POLL)
            return offset
