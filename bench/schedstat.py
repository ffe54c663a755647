"""On-CPU time of a process from /proc, standard library only: the bench's agents read it inside
VSMs, where importing the rest of the bench would change what is measured."""

from __future__ import annotations

import contextlib
import os


def task_seconds(pid: int) -> float | None:
    """On-CPU time of every thread of ``pid`` in ns precision (/proc/PID/task/*/schedstat);
    None when there is no such process.

    /proc/PID/stat counts whole clock ticks per process and truncates: a process that ran
    for 8 ms reads as 0, which would hide the start-up cost of a thousand short starts.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tasks:
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{pid}/task/{tid}/schedstat") as f,
        ):
            total += int(f.read().split()[0])
    return total / 1e9
