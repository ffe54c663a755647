"""Who is who on the broker, and what each identity may touch.

Names: a VSM is ``vsm-<id>`` (the ``sub`` of its token), the daemon and the operators are
internal broker users. Receivers read the broker-checked ``user_id`` property, never a field
the sender writes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsmd.bus.topology import Topology
from vsmd.security.tokens import TokenMinter

DAEMON_USER = "vsmd-daemon"
OPERATOR_USER = "vsmd-operator"
VIEWER_USER = "vsmd-viewer"
ROLES = {OPERATOR_USER: "operator", VIEWER_USER: "viewer"}
VSM_PREFIX = "vsm-"

# Operators and viewers have the same broker rights (admin queue, their reply-to, event
# queues they declare); what each may ask is decided by the daemon and the VSMs from user_id.
OPERATOR_PERMS = (r"^amq\.gen-.*", r"^(amq\.default|amq\.gen-.*|.*\.recursive)$", r".*")


def vsm_user(vsm_id: str) -> str:
    return f"{VSM_PREFIX}{vsm_id}"


def vsm_id_of(user_id: str | None) -> str | None:
    """The VSM id behind a broker-checked user_id, or None when it is no VSM."""
    if user_id and user_id.startswith(VSM_PREFIX):
        return user_id[len(VSM_PREFIX) :]
    return None


@dataclass(frozen=True)
class Place:
    """Where a VSM sits in its tree: all its token's scopes follow from this."""

    vsm_id: str
    path: str
    parent_id: str | None
    ancestors: tuple[str, ...]  # root first


def vsm_scopes(minter: TokenMinter, topo: Topology, place: Place) -> list[str]:
    v, p, ex = place.vsm_id, place.path, topo.exchange
    inbox = topo.inbox(v)
    root = place.ancestors[0] if place.ancestors else v
    # Patterns: ``*`` also matches dots in the broker's wildcards, so ``up.<path>.*`` covers a
    # descendant's keys too; the daemon still checks that the key's path is the sender's own.
    publish = [f"up.{p}.*", f"down.{p}", f"down.{p}.*", "vsm.*", f"kids.{v}", f"sub.{v}"]
    publish.append(f"alg.{root}.{v}")
    if place.parent_id is not None:
        publish.append(f"toparent.{place.parent_id}.{v}")
    bind = topo.inbox_bindings(v, p, place.ancestors)
    scopes = [
        minter.scope("configure", inbox),
        minter.scope("read", inbox),
        minter.scope("write", inbox),  # queue.bind needs write on the queue
        # Its task queue (the worker type): declared and consumed by the VSM itself; anyone
        # publishes to it through the default exchange, and the worker checks user_id.
        minter.scope("configure", topo.task_queue(v)),
        minter.scope("read", topo.task_queue(v)),
        # Replies to direct reply-to and dead letters go through the default exchange; every
        # receiver checks user_id, so this reaches nobody who does not check who wrote it.
        minter.scope("write", "amq.default"),
    ]
    scopes += [minter.scope("write", ex, key) for key in publish]
    scopes += [minter.scope("read", ex, key) for key in bind]
    return scopes


# The broker side of secure mode: one resource server (vsmd's tokens) and one vhost of its own,
# where `guest` and any other account have no rights.
RESOURCE_SERVER_ID = "vsmd"
VHOST = "vsmd"

# What a viewer may ask the daemon; everything else needs the operator role.
VIEWER_COMMANDS = frozenset({"ping", "list", "agents", "show", "events", "state", "policy_show"})
