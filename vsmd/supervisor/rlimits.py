"""Hard limits set in a VSM's process before any agent code runs (inherited by exec and by
every process the agent starts). The soft layer, the psutil sampler, is in the daemon."""

from __future__ import annotations

import resource
from typing import Any


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def apply_rlimits(policy: dict[str, Any]) -> None:
    """In the child, before the agent exists."""
    memory_mb = policy.get("memory_mb")
    if memory_mb:
        limit = _vm_size() + 2 * int(memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    max_fds = policy.get("max_fds")
    if max_fds:
        # The runtime itself needs a few dozen descriptors (broker socket, pipes).
        limit = max(2 * int(max_fds), 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
