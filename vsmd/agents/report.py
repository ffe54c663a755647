"""State writes of the agents that watch or reach outside (sensor, api), tolerant of a grant
without ``state`` or ``metrics``: a spawn may hand out less than a type declares, and such a VSM
should go on doing its work unreported rather than fail at its first write.
"""

from __future__ import annotations

import logging
from typing import Any

from vsmd.agents import StateApi
from vsmd.errors import Unauthorized

log = logging.getLogger("vsmd.agents")


class StateWriter:
    def __init__(self, state: StateApi, path: str) -> None:
        self._state = state
        self._path = path
        self._refused: set[str] = set()  # capabilities found missing (said once in the log)
        self._health: str | None = None

    def _try(self, capability: str, write: Any, *args: Any) -> None:
        if capability in self._refused:
            return
        try:
            write(*args)
        except Unauthorized as err:
            self._refused.add(capability)
            log.warning("%s: %s; its %s writes are skipped", self._path, err.message, capability)

    def set(self, key: str, value: Any) -> None:
        self._try("state", self._state.set, key, value)

    def delete(self, key: str) -> None:
        self._try("state", self._state.delete, key)

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self._try("metrics", self._state.count, name, n)

    def health(self, status: str) -> None:
        """Written only when it changes: every write is a delta up the tree."""
        if status != self._health:
            self._health = status
            self._try("metrics", self._state.health, status)

    @property
    def current_health(self) -> str | None:
        return self._health
