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

    def task_queue(self, vsm_id: str) -> str:
        """A worker's durable task queue: it outlives the VSM's processes, not the VSM."""
        return f"{self.namespace}.tasks.{vsm_id}"

    @property
    def dead_queue(self) -> str:
        """Messages that failed validation and had nobody to answer, with the reason."""
        return f"{self.namespace}.dead"

    # --- the tree's addressing (docs/protocol.md, "Routing") ---------------------------------
    # Keys name VSMs by id where a binding must survive a re-parenting (ids never change, paths
    # of abandoned VSMs keep their old prefix), and by path where an operator addresses them.

    @staticmethod
    def id_key(vsm_id: str) -> str:
        """Direct to one VSM by id."""
        return f"vsm.{vsm_id}"

    @staticmethod
    def to_parent_key(parent_id: str, sender_id: str) -> str:
        """From a VSM to its parent; the parent binds ``toparent.<own id>.*``."""
        return f"toparent.{parent_id}.{sender_id}"

    @staticmethod
    def children_key(parent_id: str) -> str:
        """Broadcast to the direct children of ``parent_id``; each child binds it."""
        return f"kids.{parent_id}"

    @staticmethod
    def subtree_key(ancestor_id: str) -> str:
        """Broadcast to every descendant of ``ancestor_id``; each binds one per ancestor."""
        return f"sub.{ancestor_id}"

    @staticmethod
    def alert_key(root_id: str, sender_id: str) -> str:
        """Algedonic: reaches the tree's root (``alg.<root id>.*``) and the daemon (``alg.#``)."""
        return f"alg.{root_id}.{sender_id}"

    def inbox_bindings(self, vsm_id: str, path: str, ancestors: tuple[str, ...]) -> list[str]:
        """Every key a VSM's inbox is bound to; ``ancestors`` are ids, the root first."""
        keys = [self.down_key(path), self.id_key(vsm_id), f"toparent.{vsm_id}.*"]
        if ancestors:
            keys.append(self.children_key(ancestors[-1]))
            keys.extend(self.subtree_key(a) for a in ancestors)
        else:
            keys.append(f"alg.{vsm_id}.*")  # a root hears the alerts of its whole tree
        return keys

    @staticmethod
    def path_of_up_key(key: str) -> tuple[str, str] | None:
        """Split ``up.<path>.<kind>`` into (path, kind)."""
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "up":
            return None
        return ".".join(parts[1:-1]), parts[-1]
