"""What a spawn must pass before anything is forked: the parent's state, the limits (depth,
totals, children, policy from above), the agent type and its settings, the name, the budget,
the capabilities the parent may hand out, and last the throttle.

All of it runs on the daemon's loop thread, for SpawnManager.
"""

from __future__ import annotations

import dataclasses
import uuid

from vsmd.agents import AgentRegistry
from vsmd.config import Config, check_name
from vsmd.daemon import budget, policy_limits
from vsmd.daemon.registry import Registry, Status, VsmRecord
from vsmd.daemon.throttle import Admission
from vsmd.errors import ConfigError, Conflict, ProtocolError, QuotaExceeded, Unauthorized
from vsmd.protocol import Policy, SpawnConfig


class Gate:
    def __init__(
        self, config: Config, registry: Registry, agents: AgentRegistry, throttle: Admission
    ) -> None:
        self.config = config
        self.registry = registry
        self.agents = agents
        self.throttle = throttle
        # Limits set at run time (vsmctl policy set); the daemon plugs in its state store.
        self.state_policy: policy_limits.StatePolicy | None = None

    def admit(self, parent_id: str | None, config: SpawnConfig) -> VsmRecord:
        """The record of a VSM that may be spawned under ``parent_id``, or the error why not."""
        parent = self.registry.get(parent_id) if parent_id is not None else None
        if parent is not None and parent.status is not Status.RUNNING:
            raise Conflict(f"parent {parent.id} is {parent.status}, not running")
        depth = 1 if parent is None else parent.depth + 1
        self._check_limits(parent, depth)
        if self.state_policy is not None:
            policy_limits.check_spawn(self.registry, self.state_policy, parent, depth)
        agent = config.agent or self.config.default_agent
        # Unknown type: NOT_FOUND; settings its schema refuses: INVALID_CONFIG, before a fork.
        self.agents.validate(agent, dict(config.settings))
        vsm_id = uuid.uuid4().hex[:12]
        try:
            name = check_name(config.name, "VSM name") if config.name else vsm_id
        except ConfigError as err:
            raise ProtocolError(err.message, field="name") from None
        if self.registry.sibling_named(parent_id, name) is not None:
            raise Conflict(
                f"a VSM named {name!r} already exists under "
                f"{parent.path if parent else 'the top level'}"
            )
        path = name if parent is None else f"{parent.path}.{name}"
        if self.registry.path_taken(path):
            raise Conflict(f"path {path} is taken (by a VSM abandoned there by its old parent)")
        policy = budget.with_memory_share(
            self.registry, self.config, parent_id, config.policy.validate()
        )
        budget.check(self.registry, self.config, parent_id, policy)
        policy = self._grant(parent, agent, policy)
        self.throttle.admit(parent_id)  # last: a refused spawn must not use up a token
        return VsmRecord(
            id=vsm_id,
            name=name,
            parent=parent_id,
            path=path,
            depth=depth,
            agent=agent,
            config=dict(config.settings),
            policy=policy,
        )

    def capabilities_of(self, rec: VsmRecord) -> frozenset[str]:
        """What the VSM's agent was granted: what its spawn asked for, else its type's
        capabilities within what its parent holds."""
        if rec.policy.capabilities is not None:
            return frozenset(rec.policy.capabilities)
        own = self.agents.get(rec.agent).capabilities if rec.agent in self.agents else frozenset()
        parent = self.registry.find(rec.parent) if rec.parent is not None else None
        return own if parent is None else own & self.capabilities_of(parent)

    def _grant(self, parent: VsmRecord | None, agent: str, policy: Policy) -> Policy:
        """A spawn may ask for capabilities, never more than its parent holds: a VSM cannot
        hand out what it was not given."""
        if policy.capabilities is None:
            return policy
        asked = frozenset(policy.capabilities)
        held = asked if parent is None else self.capabilities_of(parent)
        if not asked <= held:
            assert parent is not None
            missing = ", ".join(sorted(asked - held))
            raise Unauthorized(
                f"VSM {parent.path} cannot grant {missing}: it does not hold it",
                field="capabilities",
            )
        return dataclasses.replace(policy, capabilities=sorted(asked))

    def require(self, rec: VsmRecord, capability: str) -> None:
        """Unauthorized unless the VSM was granted ``capability``."""
        if capability not in self.capabilities_of(rec):
            raise Unauthorized(f"VSM {rec.path} was not granted the {capability} capability")

    def _check_limits(self, parent: VsmRecord | None, depth: int) -> None:
        if depth > self.config.max_depth:
            raise QuotaExceeded(
                f"depth {depth} is over max_depth {self.config.max_depth}",
                limit="max_depth",
                value=depth,
                max=self.config.max_depth,
            )
        live = self.registry.live_count()
        if live >= self.config.max_total:
            raise QuotaExceeded(
                f"{live} VSMs are running; max_total is {self.config.max_total}",
                limit="max_total",
                value=live,
                max=self.config.max_total,
            )
        if parent is None:
            return
        cap = min(self.config.max_children, parent.policy.max_children or self.config.max_children)
        if len(parent.children) >= cap:
            raise QuotaExceeded(
                f"{parent.path} has {len(parent.children)} children; max_children is {cap}",
                limit="max_children",
                value=len(parent.children),
                max=cap,
            )
