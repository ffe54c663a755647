"""The seam between the supervisor and the OS, so crash paths get unit tests without processes."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from typing import Protocol

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_MEMORY_MERGE = 67  # Linux 6.4
KSM_RUN = "/sys/kernel/mm/ksm/run"
EXIT_PARENT_GONE = 71  # our parent died before we asked to die with it


class OsCalls(Protocol):
    def fork(self) -> int: ...

    def waitpid(self, pid: int, options: int) -> tuple[int, int]: ...

    def killpg(self, pgid: int, sig: int) -> None: ...

    def kill(self, pid: int, sig: int) -> None: ...


class RealOs:
    """The real thing."""

    def fork(self) -> int:
        return os.fork()

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        return os.waitpid(pid, options)

    def killpg(self, pgid: int, sig: int) -> None:
        os.killpg(pgid, sig)

    def kill(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)


@functools.cache
def _libc() -> ctypes.CDLL:
    # The C library already mapped into this process: find_library("c") would run ldconfig,
    # milliseconds on every spawn.
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc().prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def madvise(address: int, length: int, advice: int) -> int:
    """madvise(2) on a range of this process: 0, or the errno it failed with."""
    libc = _libc()
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return 0 if libc.madvise(address, length, advice) == 0 else ctypes.get_errno()


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` when the thread that forked us ends (PR_SET_PDEATHSIG).

    ``parent`` is the pid our parent had before it started us. The kernel only signals a death
    that comes after the request: a parent already gone by then (we were re-parented) would
    leave us running with nobody above us, so we leave at once, as the signal would have made us.
    """
    _prctl(PR_SET_PDEATHSIG, sig)
    if parent is not None and os.getppid() != parent:
        os._exit(EXIT_PARENT_GONE)


def hide_memory() -> None:
    """PR_SET_DUMPABLE 0: other processes of our uid can no longer read /proc/<pid>/mem or
    environ, nor ptrace us (only CAP_SYS_PTRACE can). Holds our secrets in, not theirs out."""
    _prctl(PR_SET_DUMPABLE, 0)


def merge_pages() -> None:
    """PR_SET_MEMORY_MERGE: every page of this process and of the processes it forks from now
    on may be merged by the kernel's KSM with identical pages of any other process. A VSM's
    private pages are mostly fork-server pages it copied on a write and that hold the same
    bytes again, or the same bytes as its siblings' copies: KSM gives them back.

    Raises OSError (EINVAL: a kernel without it; EPERM: without CAP_SYS_RESOURCE).
    """
    _prctl(PR_SET_MEMORY_MERGE, 1)


def ksm_running() -> bool | None:
    """Whether the kernel's page-merging thread runs: None when this kernel has no KSM."""
    try:
        with open(KSM_RUN) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def drop_to(uid: int, parent: int) -> None:
    """Become ``uid`` (group ``uid``, no supplementary groups) for good.

    The kernel clears the death signal on a change of credentials: set it again.
    """
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    die_with_parent(signal.SIGKILL, parent)


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to us instead of init, so we reap them."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def describe_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from a waitpid status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def exit_text(code: int | None, sig: int | None) -> str:
    if sig is not None:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {code}"
