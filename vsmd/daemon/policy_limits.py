"""Supervision limits that come from state policy (``vsmctl policy set``), enforced by the
daemon next to the spawn-time policy: the stricter of the two holds."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from vsmd.daemon.registry import Registry, VsmRecord
from vsmd.errors import QuotaExceeded
from vsmd.protocol import Policy


class StatePolicy(Protocol):
    def effective(self, rec: VsmRecord) -> dict[str, Any]: ...

    def own(self, rec: VsmRecord) -> dict[str, Any]: ...

    def initial_state(self, rec: VsmRecord) -> tuple[dict[str, Any], bool]: ...


def check_spawn(
    registry: Registry, state: StatePolicy, parent: VsmRecord | None, depth: int
) -> None:
    """QuotaExceeded when the parent's effective max_children, or a max_depth_below set on the
    parent or an ancestor, leaves no room for a child at ``depth``."""
    if parent is None:
        return
    cap = state.effective(parent).get("max_children")
    if isinstance(cap, int) and len(parent.children) >= cap:
        raise QuotaExceeded(
            f"{parent.path} has {len(parent.children)} children; its policy max_children is {cap}",
            limit="max_children",
            value=len(parent.children),
            max=cap,
        )
    node: VsmRecord | None = parent
    while node is not None:
        # Relative to where it was set: inherited literally it would loosen with every level.
        below = state.own(node).get("max_depth_below")
        if isinstance(below, int) and depth - node.depth > below:
            raise QuotaExceeded(
                f"depth {depth} is {depth - node.depth} below {node.path}, whose policy "
                f"max_depth_below is {below}",
                limit="max_depth_below",
                value=depth - node.depth,
                max=below,
            )
        node = registry.find(node.parent) if node.parent is not None else None


def tightened(rec: VsmRecord, state: StatePolicy) -> Policy:
    """The VSM's spawn-time policy with memory_mb and cpu_percent lowered by state policy."""
    eff = state.effective(rec)
    changes: dict[str, Any] = {}
    for name in ("memory_mb", "cpu_percent"):
        value = eff.get(name)
        current = getattr(rec.policy, name)
        if isinstance(value, int | float) and (current is None or value < current):
            changes[name] = int(value) if name == "memory_mb" else float(value)
    return dataclasses.replace(rec.policy, **changes) if changes else rec.policy
