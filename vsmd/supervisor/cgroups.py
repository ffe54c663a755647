"""Joining the VSM's cgroup, in the child right after fork, before any agent code runs.

The daemon has created the cgroups and written their limits (vsmd.daemon.cgroups); the spec
names the ``cgroup.procs`` files to join, one per hierarchy (cgroup v1 mounts each controller
on its own). Everything the agent starts afterwards is born inside them.
"""

from __future__ import annotations

import os


def join_cgroups(procs_files: tuple[str, ...]) -> None:
    """Move this process into each cgroup; an OSError if one refuses (no start unconfined)."""
    pid = str(os.getpid())
    for path in procs_files:
        with open(path, "w") as f:
            f.write(pid)
