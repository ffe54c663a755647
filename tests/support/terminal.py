"""A terminal for tests that look at a screen as a person would: a tmux pane of its own."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import poll_for

TMUX = shutil.which("tmux") or "/usr/bin/tmux"


class Terminal:
    """A tmux pane of its own (a private tmux server), read with capture-pane."""

    def __init__(self, env: dict[str, str], command: str) -> None:
        # The server's socket in a directory of our own, removed with it (tmux leaves its
        # socket file behind when the server is killed).
        self._dir = Path(tempfile.mkdtemp(prefix="vsmd-tmux-"))
        self.socket = str(self._dir / "socket")
        # A new server inherits this environment: the daemon's namespace and broker.
        self._tmux("new-session", "-d", "-s", "main", "-x", "150", "-y", "40", command, env=env)

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        res = subprocess.run(
            [TMUX, "-S", self.socket, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert res.returncode == 0, f"tmux {args[0]}: {res.stderr}"
        return res.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "main")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "main", *keys)

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
        """The screen once ``check(screen)`` holds; fails with the last screen."""
        last = [""]

        def seen() -> str | None:
            last[0] = self.screen()
            return last[0] if check(last[0]) else None

        try:
            return poll_for(seen, timeout, 0.1, what)
        except AssertionError:
            raise AssertionError(f"{what} never showed; the screen:\n{last[0]}") from None

    def close(self) -> None:
        for args in (["kill-session", "-t", "main"], ["kill-server"]):
            subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True, check=False)
        shutil.rmtree(self._dir, ignore_errors=True)
