"""procstat: the sampler's one read of /proc/<pid>/stat, checked against psutil's readings."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from vsmd.daemon import procstat

# A child that renames itself to a name with spaces and parentheses (a process chooses its own
# comm, so the parser must not trust it), says so and waits.
RENAMED = (
    "import sys, threading, time; open('/proc/self/comm', 'w').write('a) b (c) 9 9');"
    "threading.Thread(target=time.sleep, args=(60,), daemon=True).start();"
    "print('ready', flush=True); sys.stdin.read()"
)


def test_this_process_reads_as_psutil_reads_it() -> None:
    me = psutil.Process()
    st = procstat.read(os.getpid())
    assert st.ppid == os.getppid()
    assert st.threads == me.num_threads()
    # Both read the kernel's resident-page counter; pages may move between the two reads.
    assert abs(st.rss - me.memory_info().rss) < 4 << 20
    times = me.cpu_times()
    assert st.cpu_seconds == pytest.approx(times.user + times.system, abs=0.05)


def test_a_name_with_parentheses_does_not_shift_the_fields() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", RENAMED], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        st = procstat.read(proc.pid)
        assert psutil.Process(proc.pid).name() == "a) b (c) 9 9"
        assert (st.ppid, st.threads) == (os.getpid(), 2)
        assert st.rss > 1 << 20
        assert proc.pid in procstat.children_map()[os.getpid()]
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            assert pipe is not None
            pipe.close()


def test_a_reaped_process_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(procstat.ProcessGone):
        procstat.read(proc.pid)
    with pytest.raises(procstat.ProcessGone):
        procstat.open_fds(proc.pid)


def test_open_fds_counts_what_is_open() -> None:
    before = procstat.open_fds(os.getpid())
    r, w = os.pipe()
    try:
        assert procstat.open_fds(os.getpid()) == before + 2
    finally:
        os.close(r)
        os.close(w)
