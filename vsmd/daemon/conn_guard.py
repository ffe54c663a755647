"""Each VSM may hold a few broker connections with its token; the daemon closes the rest.

RabbitMQ 3.10 has no per-user connection limit for token users, and a VSM can open as many
connections as it likes with its own token. The secure node publishes connection events
(rabbitmq_event_exchange); the daemon keeps a count per VSM and closes connections beyond
PER_VSM, counting each as a refusal of that VSM.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from vsmd.security.identity import vsm_id_of

log = logging.getLogger("vsmd.trust")
# One for the VSM, one more while a reconnecting VSM's old connection is not yet gone.
PER_VSM = 2
CloseFn = Callable[[list[str], str], bool]  # connection pids, reason -> done


class ConnectionGuard:
    def __init__(self, close: CloseFn | None, refused: Callable[[str, str], None]) -> None:
        """``close``: None on a broker the daemon cannot reach into (one of your own): the
        extra connections are then counted and logged, not closed."""
        self._close = close
        self._refused = refused
        self._by_user: dict[str, list[str]] = {}  # user -> connection pids, oldest first
        self._user_of: dict[str, str] = {}
        self._closing = threading.Lock()
        self.closed = 0

    def on_event(self, key: str, headers: dict[str, Any]) -> None:
        pid = _text(headers.get("pid"))
        if not pid:
            return
        if key == "connection.closed":
            user = self._user_of.pop(pid, None)
            if user is not None:
                pids = self._by_user.get(user, [])
                if pid in pids:
                    pids.remove(pid)
                if not pids:
                    self._by_user.pop(user, None)
            return
        user = _text(headers.get("user"))
        if key != "connection.created" or vsm_id_of(user) is None:
            return
        pids = self._by_user.setdefault(user, [])
        pids.append(pid)
        self._user_of[pid] = user
        if len(pids) > PER_VSM:
            self._refused(user, f"a connection beyond its {PER_VSM}")
            self._close_later([pid], f"vsmd: {user} holds more than {PER_VSM} connections")

    def reset(self) -> None:
        """After a reconnect of the daemon: events were missed, start counting anew."""
        self._by_user.clear()
        self._user_of.clear()

    def _close_later(self, pids: list[str], reason: str) -> None:
        # The close goes through the node's CLI (about a second): never on the daemon's loop.
        close = self._close
        if close is None:
            return

        def run() -> None:
            with self._closing:
                if close(pids, reason):
                    self.closed += len(pids)
                else:
                    log.warning("could not close connections %s", pids)

        threading.Thread(target=run, name="close-connections", daemon=True).start()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""
