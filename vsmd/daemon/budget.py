"""Hierarchical budgets: a VSM's budget is carved out of its nearest budgeted ancestor's.

Two resources: descendants (how many VSMs a subtree may hold below its root) and memory (the sum
of memory quotas in a subtree, its root included). A VSM with a budget holds that whole budget
from its parent's; one without holds what it and its subtree use. Nothing is stored: what is held
is computed from the live registry, so a VSM that ends returns its share at once.
"""

from __future__ import annotations

import dataclasses

from vsmd.config import Config
from vsmd.daemon.registry import Registry, VsmRecord
from vsmd.errors import QuotaExceeded
from vsmd.protocol import Policy


def _held_descendants(reg: Registry, rec: VsmRecord) -> int:
    if rec.policy.budget_descendants is not None:
        return rec.policy.budget_descendants + 1
    return 1 + sum(_held_descendants(reg, reg.get(c)) for c in rec.children)


def _held_memory(reg: Registry, rec: VsmRecord) -> int:
    if rec.policy.budget_memory_mb is not None:
        return rec.policy.budget_memory_mb
    return (rec.policy.memory_mb or 0) + sum(_held_memory(reg, reg.get(c)) for c in rec.children)


def _cost(policy: Policy) -> tuple[int, int]:
    descendants = 1 + (policy.budget_descendants or 0)
    memory = (
        policy.budget_memory_mb if policy.budget_memory_mb is not None else (policy.memory_mb or 0)
    )
    return descendants, memory


def _under_memory_budget(reg: Registry, config: Config, parent_id: str | None) -> bool:
    node = reg.get(parent_id) if parent_id is not None else None
    while node is not None:
        if node.policy.budget_memory_mb is not None:
            return True
        node = reg.get(node.parent) if node.parent is not None else None
    return config.memory_budget_mb > 0


def with_memory_share(
    reg: Registry, config: Config, parent_id: str | None, policy: Policy
) -> Policy:
    """Give a VSM under a memory budget that declares no memory its default share.

    A VSM without ``memory_mb`` would otherwise cost its budget nothing, so a budgeted subtree
    could hold unlimited memory. The share becomes its ``memory_mb``, so the quota that is
    charged is also the one enforced (rlimit and sampler). With ``default_memory_mb = 0`` such
    a spawn is refused instead.
    """
    if policy.memory_mb is not None or policy.budget_memory_mb is not None:
        return policy
    if not _under_memory_budget(reg, config, parent_id):
        return policy
    if config.default_memory_mb == 0:
        raise QuotaExceeded(
            "under a memory budget a VSM must declare memory_mb (or budget_memory_mb); "
            "default_memory_mb is 0",
            limit="memory_mb",
        )
    return dataclasses.replace(policy, memory_mb=config.default_memory_mb)


def check(reg: Registry, config: Config, parent_id: str | None, policy: Policy) -> None:
    """Raise QuotaExceeded (with the numbers) when a new VSM with ``policy`` does not fit.

    ``policy`` has been through :func:`with_memory_share` first."""
    if (
        policy.budget_memory_mb is not None
        and policy.memory_mb is not None
        and policy.memory_mb > policy.budget_memory_mb
    ):
        raise QuotaExceeded(
            f"memory_mb {policy.memory_mb} is over the VSM's own budget_memory_mb "
            f"{policy.budget_memory_mb}",
            limit="budget_memory_mb",
        )
    need_d, need_m = _cost(policy)
    d_done = m_done = False
    node = reg.get(parent_id) if parent_id is not None else None
    while node is not None and not (d_done and m_done):
        if not d_done and node.policy.budget_descendants is not None:
            used = sum(_held_descendants(reg, reg.get(c)) for c in node.children)
            _fits("budget_descendants", node, used, need_d, node.policy.budget_descendants)
            d_done = True
        if not m_done and node.policy.budget_memory_mb is not None and need_m:
            used = (node.policy.memory_mb or 0) + sum(
                _held_memory(reg, reg.get(c)) for c in node.children
            )
            _fits("budget_memory_mb", node, used, need_m, node.policy.budget_memory_mb)
            m_done = True
        node = reg.get(node.parent) if node.parent is not None else None
    if not m_done and need_m and config.memory_budget_mb:
        used = sum(_held_memory(reg, r) for r in reg.roots())
        _fits("memory_budget_mb", None, used, need_m, config.memory_budget_mb)


def _fits(limit: str, node: VsmRecord | None, used: int, need: int, cap: int) -> None:
    if used + need <= cap:
        return
    owner = f"VSM {node.path}" if node is not None else "the daemon"
    raise QuotaExceeded(
        f"{limit} of {owner} is exhausted: {used} used + {need} asked > {cap}",
        limit=limit,
        owner=node.id if node is not None else None,
        used=used,
        asked=need,
        max=cap,
    )
