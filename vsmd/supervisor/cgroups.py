"""Joining the VSM's cgroup, in the child right after fork, before any agent code runs.

The daemon has created the cgroups and written their limits (vsmd.daemon.cgroups); the spec
names the ``cgroup.procs`` files to join, one per hierarchy (cgroup v1 mounts each controller
on its own). Everything the agent starts afterwards is born inside them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def join_cgroups(procs_files: tuple[str, ...]) -> None:
    """Move this process into each cgroup; an OSError if one refuses (no start unconfined)."""
    pid = str(os.getpid())
    one_thread = len(os.listdir("/proc/self/task")) == 1
    for path in procs_files:
        tasks = os.path.join(os.path.dirname(path), "tasks")
        if one_thread and os.path.exists(tasks):
            # cgroup v1, and this process has one thread (it was just forked): "0" in ``tasks``
            # moves the calling thread, i.e. all of it. A pid in cgroup.procs moves a thread
            # group, for which the kernel first waits out an RCU grace period (9.3 ms against
            # 1.2 ms for three hierarchies, measured here): on every spawn, and while it waits
            # it holds the cgroup mutex the daemon needs to create the next VSM's cgroup.
            with open(tasks, "w") as f:
                f.write("0")
        else:
            with open(path, "w") as f:
                f.write(pid)


def _listed(procs_file: str) -> list[int]:
    try:
        with open(procs_file) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def sweep(procs_files: list[str], deadline: float = 2.0) -> None:
    """When the daemon died: kill what is left in these cgroups and remove them, up to and
    including the namespace's ``vsmd-*`` directory, so nothing (a process that left its VSM's
    group, an empty directory) outlives it. Best effort: what is busy stays."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        left = {pid for path in procs_files for pid in _listed(path)}
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    # Deepest first, so each directory has no child cgroup left when its turn comes.
    dirs = {os.path.dirname(path) for path in procs_files}
    for leaf in sorted(dirs, key=lambda d: -d.count("/")):
        d = leaf
        while os.path.basename(os.path.dirname(d)) != "":
            try:
                os.rmdir(d)
            except FileNotFoundError:
                break  # removed already: by a new daemon of the namespace, maybe; its business
            except OSError:
                break  # busy: a sibling's cgroup, or a process that would not die
            if os.path.basename(d).startswith("vsmd-"):
                break
            d = os.path.dirname(d)
