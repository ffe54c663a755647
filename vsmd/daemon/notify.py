"""The sd_notify protocol: datagrams to the socket systemd names in NOTIFY_SOCKET.

Written here rather than taken from a library: it is one sendto. Without NOTIFY_SOCKET (not
started by systemd with Type=notify) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from vsmd.daemon.timers import Timers

log = logging.getLogger("vsmd.notify")
STATUS_EVERY = 5.0  # seconds between STATUS= updates
ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        if env is None:
            # Taken out of the environment, as sd_notify(unset_environment) does: the fork server
            # and every VSM inherit it, and none of them speaks for the service.
            env = {k: os.environ.pop(k) for k in ENV_KEYS if k in os.environ}
        address = env.get("NOTIFY_SOCKET", "")
        # '@' names a socket in the abstract namespace, which starts with a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """One datagram of ``KEY=value`` lines; a failure is logged, never raised."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or the socket full: the daemon goes on
            log.debug("sd_notify %s failed: %s", fields, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, if it is meant for us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1e6


def start(notifier: Notifier, timers: Timers, count: Callable[[], int]) -> None:
    """READY=1 now; STATUS= every few seconds; WATCHDOG=1 from the loop's own timers, so a
    loop that is stuck stops pinging and systemd restarts the daemon."""
    if not notifier.enabled:
        return

    def status() -> None:
        timers.call_later(STATUS_EVERY, status)
        notifier.send(f"STATUS={count()} VSMs")

    notifier.send("READY=1", f"STATUS={count()} VSMs")
    timers.call_later(STATUS_EVERY, status)
    interval = notifier.watchdog_interval
    if interval is not None:

        def watchdog() -> None:
            timers.call_later(interval, watchdog)
            notifier.send("WATCHDOG=1")

        watchdog()
