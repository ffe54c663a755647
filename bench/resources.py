"""Memory and CPU of the daemon, its fork server, every VSM and the broker node (psutil)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import psutil

from bench.schedstat import task_seconds
from bench.vsmd_proc import VsmdProc

MIB = 2**20


def beam_pid(root_pid: int) -> int | None:
    """The Erlang VM of a private node started by EmbeddedBroker (a descendant of its script)."""
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(root_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if p.name().startswith("beam"):
                    return p.pid
    return None


def _procs(pids: Iterable[int | None]) -> list[psutil.Process]:
    out: list[psutil.Process] = []
    for pid in pids:
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid))
    return out


def memory(d: VsmdProc, broker: int | None) -> dict[str, list[float]]:
    """MiB: daemon/fork server/broker RSS (one value each), and RSS/USS/PSS of every VSM."""
    out: dict[str, list[float]] = {}
    singles = {"daemon_rss": d.pid, "forkserver_rss": d.forkserver_pid(), "broker_rss": broker}
    for key, pid in singles.items():
        for p in _procs([pid]):
            with contextlib.suppress(psutil.Error):
                out[key] = [p.memory_info().rss / MIB]
    for key in ("vsm_rss", "vsm_uss", "vsm_pss"):
        out[key] = []
    for p in _procs(d.vsm_pids()):
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            out["vsm_rss"].append(info.rss / MIB)
            out["vsm_uss"].append(info.uss / MIB)
            out["vsm_pss"].append(info.pss / MIB)
    return out


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        precise = task_seconds(p.pid)
        if precise is not None:
            total += precise
            continue
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def idle_cpu(d: VsmdProc, broker: int | None, seconds: float) -> dict[str, float]:
    """Percent of one core used over ``seconds`` while nothing is asked of the daemon."""
    vsms = _procs(d.vsm_pids())
    groups = {
        "daemon": _procs([d.pid]),
        "forkserver": _procs([d.forkserver_pid()]),
        "vsms_total": vsms,
        "broker": _procs([broker]),
        **{k: _procs(v) for k, v in memory_monitors().items()},
    }
    before = {k: _cpu(v) for k, v in groups.items()}
    start = time.perf_counter()
    time.sleep(seconds)
    after = {k: _cpu(v) for k, v in groups.items()}
    wall = time.perf_counter() - start
    out = {k: (after[k] - before[k]) / wall * 100 for k in groups if groups[k]}
    if vsms:
        out["vsm_each"] = out["vsms_total"] / len(vsms)
    return out


def memory_monitors() -> dict[str, list[int | None]]:
    """{"kdamond": pids} where the machine runs the kernel's DAMON threads, else {}: they
    sample the pages of every process and their CPU grows with what many processes map, so
    a step that runs many processes shares the cores with them."""
    pids: list[int | None] = [
        p.pid
        for p in psutil.process_iter(["name"])
        if str(p.info["name"] or "").startswith("kdamond")
    ]
    return {"kdamond": pids} if pids else {}


def cpu_of(pids: Iterable[int | None]) -> float:
    """User + system CPU seconds of those processes (the ones still alive)."""
    return _cpu(_procs(pids))


class CpuWindow:
    """CPU seconds that named processes spend between construction and :meth:`stop`."""

    def __init__(self, named: dict[str, list[int | None]]) -> None:
        self.named = named
        self.before = {k: cpu_of(v) for k, v in named.items()}

    def stop(self, born: dict[str, list[int]]) -> dict[str, float]:
        """``born``: processes started inside the window; all of their CPU counts."""
        out = {k: cpu_of(v) - self.before[k] for k, v in self.named.items()}
        out.update({k: cpu_of(v) for k, v in born.items()})
        return out


def broker_settled(broker: int | None, timeout: float = 30.0, steady: float = 1.0) -> bool:
    """Wait until the broker's open files have held still for ``steady`` seconds.

    The pause between two runs: the broker closes a run's connections after their clients are
    gone, and a run started meanwhile would share the cores with that clean-up. False when
    they still moved at ``timeout`` (the caller notes it) or the broker is not ours to watch.
    """
    procs = _procs([broker])
    if not procs:
        return False
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            fds = procs[0].num_fds()
        except psutil.Error:
            return False
        now = time.monotonic()
        if fds != last:
            last, since = fds, now
        elif now - since >= steady:
            return True
        time.sleep(0.1)
    return False
