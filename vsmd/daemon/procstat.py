"""What the quota sampler reads of a process: one read of ``/proc/<pid>/stat``.

The sampler reads every running VSM each interval from the daemon's loop. psutil read three
files per VSM (memory from ``statm``, cpu from ``stat``, threads from ``status``) through its own
Python layers; everything the sampler needs is in ``stat`` alone, so a VSM costs one open and
read here: 12 us against psutil's 46 us per VSM in a side-by-side microbenchmark on 300
processes (the sampler's share of the daemon's CPU is in docs/benchmarks.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# Fields of /proc/<pid>/stat after "pid (comm) ", counted from 0 at "state" (proc(5) numbers
# them from 1 at pid, so field N of the man page is index N - 3 here).
_PPID, _UTIME, _STIME, _THREADS, _RSS = 1, 11, 12, 17, 21


class ProcessGone(OSError):
    """The process has ended (or never was): there is nothing to read."""


@dataclass(frozen=True, slots=True)
class ProcStat:
    ppid: int
    cpu_seconds: float  # user + system, this process only (not its reaped children)
    threads: int
    rss: int  # bytes


def read(pid: int) -> ProcStat:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError as exc:  # ENOENT once reaped, ESRCH while being torn down
        raise ProcessGone(pid) from exc
    if not raw:
        raise ProcessGone(pid)
    # "pid (comm) state ...": comm may hold spaces and parentheses, so the last ")" ends it.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(
        ppid=int(fields[_PPID]),
        cpu_seconds=(int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS,
        threads=int(fields[_THREADS]),
        rss=int(fields[_RSS]) * PAGE_SIZE,
    )


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError as exc:
        raise ProcessGone(pid) from exc


def children_map() -> dict[int, list[int]]:
    """Child pids of every pid, from one pass over /proc.

    psutil's ``children(recursive=True)`` makes this same pass on every call: once per VSM, a
    sample of 1,000 VSMs would read the whole process table 1,000 times.
    """
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            ppid = read(pid).ppid
        except ProcessGone:
            continue  # exited meanwhile
        out.setdefault(ppid, []).append(pid)
    return out
