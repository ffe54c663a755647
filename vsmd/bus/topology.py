"""Names of exchanges, queues and routing keys; every one starts with the namespace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    namespace: str

    @property
    def admin_queue(self) -> str:
        return f"{self.namespace}.admin"

    @property
    def exchange(self) -> str:
        """Topic exchange of the tree: keys carry a VSM's path, so one pattern picks a subtree."""
        return f"{self.namespace}.recursive"

    @property
    def daemon_queue(self) -> str:
        """Where the daemon hears VSMs: ready reports and requests for children."""
        return f"{self.namespace}.daemon"

    def inbox(self, vsm_id: str) -> str:
        return f"{self.namespace}.vsm.{vsm_id}"

    @staticmethod
    def down_key(path: str) -> str:
        """Messages addressed to the VSM at ``path``."""
        return f"down.{path}"

    @staticmethod
    def up_key(path: str, kind: str) -> str:
        """Messages from the VSM at ``path`` to the daemon (and anyone bound above it)."""
        return f"up.{path}.{kind}"

    @staticmethod
    def path_of_up_key(key: str) -> tuple[str, str] | None:
        """Split ``up.<path>.<kind>`` into (path, kind)."""
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "up":
            return None
        return ".".join(parts[1:-1]), parts[-1]
