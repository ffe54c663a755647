"""Hard limits the kernel enforces: one cgroup per VSM, nested as the tree is.

Layout under the daemon's own cgroup (per controller with v1, once with v2)::

    vsmd-<namespace>/              memory_budget_mb of the daemon, if any
      <id>/                        the VSM's subtree: its budget_memory_mb
        self/                      the VSM and every process it starts: its own quotas
        <child id>/ ...            child VSMs, nested, so an ancestor's budget caps them

Processes live only in the ``self`` leaves (cgroup v2 allows no process in a cgroup that
hands controllers down). The daemon creates the directories and writes the limits before it
asks for a fork; the fork server's child joins its leaf before any agent code runs
(:mod:`vsmd.supervisor.cgroups`). After a VSM's process exits, whatever is left in its leaf
is killed; the directories go when the VSM is removed.

An abandoned VSM keeps the cgroup it was started in (cgroups cannot move): its old
ancestors' budgets go on capping it until it is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

from vsmd.config import Config
from vsmd.errors import SpawnError
from vsmd.protocol import Policy

log = logging.getLogger("vsmd.daemon.cgroups")
CONTROLLERS = ("memory", "cpu", "pids")
LEAF = "self"
V2_DAEMON_LEAF = "vsmd.daemon"  # a dot: no namespace can take this name
CPU_PERIOD_US = 100_000
# The hard layer sits at twice each soft quota (as RLIMIT_AS does), so the psutil sampler acts
# first and the kernel stops a runaway. Memory adds room for the runtime itself (interpreter,
# broker connection); pids for its own threads, since the pids controller counts threads too.
HARD_FACTOR = 2
RUNTIME_MB = 64
RUNTIME_TASKS = 8
# The limits a cgroup has when it is made (cgroup v1 and v2 file names): a spawn writes only
# what differs. A refreshed cgroup (a restart) gets every value, since a policy may loosen.
FRESH = {
    "memory.limit_in_bytes": "-1",
    "cpu.cfs_period_us": str(CPU_PERIOD_US),
    "cpu.cfs_quota_us": "-1",
    "memory.max": "max",
    "cpu.max": f"max {CPU_PERIOD_US}",
    "pids.max": "max",
}
KILL_DEADLINE = 2.0  # seconds to empty a leaf; SIGKILLed processes leave it in microseconds


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpu_quota_us: int | None = None  # per CPU_PERIOD_US
    pids: int | None = None


def hard_memory(mb: int | None) -> int | None:
    return (HARD_FACTOR * mb + RUNTIME_MB) * 2**20 if mb else None


def leaf_limits(policy: Policy) -> Limits:
    cpu = policy.cpu_percent
    return Limits(
        memory_bytes=hard_memory(policy.memory_mb),
        cpu_quota_us=int(HARD_FACTOR * cpu * CPU_PERIOD_US / 100) if cpu else None,
        pids=policy.max_procs + RUNTIME_TASKS if policy.max_procs else None,
    )


def subtree_limits(policy: Policy) -> Limits:
    return Limits(memory_bytes=hard_memory(policy.budget_memory_mb))


def _limit_files(version: int, limits: Limits) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write; "no limit" is written too (a policy may loosen)."""
    mem, cpu, pids = limits.memory_bytes, limits.cpu_quota_us, limits.pids
    if version == 1:
        return [
            ("memory", "memory.limit_in_bytes", str(mem) if mem else "-1"),
            ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
            ("cpu", "cpu.cfs_quota_us", str(cpu) if cpu else "-1"),
            ("pids", "pids.max", str(pids) if pids else "max"),
        ]
    return [
        ("memory", "memory.max", str(mem) if mem else "max"),
        ("cpu", "cpu.max", f"{cpu or 'max'} {CPU_PERIOD_US}"),
        ("pids", "pids.max", str(pids) if pids else "max"),
    ]


def _write(path: Path, value: str) -> None:
    # os-level: the same system calls as Path.write_text without its text layer, on a path
    # taken several times per spawn.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mounts(mountinfo: str) -> list[tuple[str, Path, str, set[str]]]:
    """(fstype, mount point, root within the hierarchy, super options) of cgroup mounts."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        out.append(
            (tail[0], Path(_unescape(fields[4])), _unescape(fields[3]), set(tail[2].split(",")))
        )
    return out


def _below(mount: Path, mount_root: str, cgroup: str) -> Path:
    rel = os.path.relpath(cgroup, mount_root) if mount_root != "/" else cgroup.lstrip("/")
    return mount if rel in (".", "") else mount / rel


def find_v2(proc_cgroup: str, mountinfo: str) -> dict[str, Path]:
    """Controller -> the daemon's own v2 cgroup, for the controllers it may hand down."""
    own = next((ln[3:] for ln in proc_cgroup.splitlines() if ln.startswith("0::")), None)
    mount = next(((p, r) for fs, p, r, _ in _mounts(mountinfo) if fs == "cgroup2"), None)
    if own is None or mount is None:
        return {}
    base = _below(mount[0], mount[1], own)
    try:
        available = set((base / "cgroup.controllers").read_text().split())
    except OSError:
        return {}
    return {c: base for c in CONTROLLERS if c in available}


def summed_events(mountinfo: str) -> bool:
    """Whether the v2 hierarchy counts a cgroup's events in its ancestors' memory.events too
    (the default; the mount option memory_localevents turns it off)."""
    opts = next((o for fs, _p, _r, o in _mounts(mountinfo) if fs == "cgroup2"), None)
    return opts is not None and "memory_localevents" not in opts


def find_v1(proc_cgroup: str, mountinfo: str) -> dict[str, Path]:
    """Controller -> the daemon's own v1 cgroup of that controller."""
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] != "0":
            for ctrl in parts[1].split(","):
                own[ctrl] = parts[2]
    found = {}
    for fs, point, root, opts in _mounts(mountinfo):
        for ctrl in CONTROLLERS:
            if fs == "cgroup" and ctrl in opts and ctrl in own and ctrl not in found:
                found[ctrl] = _below(point, root, own[ctrl])
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _pids(path: Path) -> set[int]:
    return {int(p) for p in _read(path).split()}


def _oom_kills(path: str) -> int | None:
    """The ``oom_kill`` counter of a memory.events or memory.oom_control file; None if it
    cannot be read."""
    # Read often: os.read of a str path takes about half the time of Path.read_text, which a
    # profile at 1,000 VSMs showed costing as much as the sample.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            text = os.read(fd, 4096).decode()
        finally:
            os.close(fd)
        return _counter(text, "oom_kill")
    except (OSError, ValueError):
        return None


def _counter(text: str, name: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


class Cgroups:
    """The daemon's side: directories, limits, emptying and removal. Loop thread only."""

    def __init__(
        self,
        version: int,
        bases: dict[str, Path],
        namespace: str,
        kill: Callable[[int, int], None] = os.kill,
        rmdir: Callable[[Path], None] = os.rmdir,
        summed_events: bool = False,
    ) -> None:
        self.version = version
        self.controllers = tuple(bases)
        self._roots = {c: b / f"vsmd-{namespace}" for c, b in bases.items()}
        self._kill = kill
        self._rmdir = rmdir
        self._rel: dict[str, str] = {}  # vsm id -> its directory below the roots
        self._oom_seen: dict[str, int] = {}
        # v2 counts an OOM kill in the memory.events of every ancestor as well (unless mounted
        # with memory_localevents): the namespace's own counter then tells whether any leaf moved.
        self.summed_events = summed_events
        self._oom_total: int | None = None

    @property
    def roots(self) -> list[Path]:
        """The namespace's cgroup per hierarchy."""
        return sorted(set(self._roots.values()))

    def describe(self) -> str:
        roots = ", ".join(str(p) for p in self.roots)
        return f"cgroup v{self.version} ({', '.join(self.controllers)}) under {roots}"

    def _dirs(self, rel: str) -> list[Path]:
        """One directory per distinct hierarchy (v2: one for every controller)."""
        return sorted({(root / rel) if rel else root for root in self._roots.values()})

    def _make(self, rel: str, limits: Limits, leaf: bool) -> None:
        made: set[Path] = set()
        for d in self._dirs(rel):
            try:
                os.mkdir(d)
                made.add(d)
            except FileExistsError:
                pass  # a restart refreshes the limits of the cgroup it had
            if self.version == 2 and not leaf:
                _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in self.controllers))
        for ctrl, name, value in _limit_files(self.version, limits):
            if ctrl not in self._roots:
                continue
            d = self._roots[ctrl] / rel
            if d in made and FRESH.get(name) == value:
                # What a new cgroup starts with: most VSMs set no limit of some kind, and in a
                # burst each write is a system call that contends for the cgroup lock.
                continue
            _write(d / name, value)

    # --- the daemon's lifetime -------------------------------------------------------------

    def start(self, memory_budget_mb: int = 0) -> None:
        """Create the namespace's cgroups; a previous daemon's leftovers go first."""
        self.stop()
        if self.version == 2:
            self._free_v2_base()
        self._make("", Limits(memory_bytes=hard_memory(memory_budget_mb)), leaf=False)

    def _free_v2_base(self) -> None:
        """v2 hands controllers down only from a cgroup without processes: move ours (the
        daemon's, as systemd started it) into a leaf beside the namespaces' cgroups."""
        base = next(iter(self._roots.values())).parent
        wanted = " ".join(f"+{c}" for c in self.controllers)
        if set(_read(base / "cgroup.subtree_control").split()) >= set(self.controllers):
            return
        leaf = base / V2_DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in _pids(base / "cgroup.procs"):
            with contextlib.suppress(ProcessLookupError):
                (leaf / "cgroup.procs").write_text(str(pid))
        (base / "cgroup.subtree_control").write_text(wanted)

    def stop(self) -> None:
        """Kill whatever is left in the namespace's cgroups and remove them, leaves first."""
        for root in set(self._roots.values()):
            # Bottom-up, so every directory is empty of others by the time it is removed.
            for top, _subdirs, _files in os.walk(root, topdown=False):
                d = Path(top)
                if d.name == LEAF:
                    self._empty([d])
                self._remove_dir(d)
        self._rel.clear()
        self._oom_seen.clear()

    # --- one VSM ---------------------------------------------------------------------------

    def prepare(
        self, vsm_id: str, parent_id: str | None, leaf: Limits, subtree: Limits
    ) -> tuple[str, ...]:
        """Create (or refresh) the VSM's cgroups; the cgroup.procs files its child joins."""
        rel = self._rel.get(vsm_id)
        if rel is None:
            above = self._rel.get(parent_id) if parent_id else None
            rel = f"{above}/{vsm_id}" if above else vsm_id
        try:
            self._make(rel, subtree, leaf=False)
            self._make(f"{rel}/{LEAF}", leaf, leaf=True)
        except OSError as exc:
            raise SpawnError(f"cannot set up the cgroup of VSM {vsm_id}: {exc}") from None
        self._rel[vsm_id] = rel
        return tuple(str(d / "cgroup.procs") for d in self._dirs(f"{rel}/{LEAF}"))

    def empty(self, vsm_id: str) -> int:
        """Kill every process left in the VSM's leaf (its process has exited); how many."""
        rel = self._rel.get(vsm_id)
        return self._empty(self._dirs(f"{rel}/{LEAF}")) if rel else 0

    def _empty(self, leaves: list[Path]) -> int:
        if self.version == 2:
            for d in leaves:
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
        killed: set[int] = set()
        deadline = time.monotonic() + KILL_DEADLINE
        while True:
            left = set().union(*(_pids(d / "cgroup.procs") for d in leaves))
            if not left:
                return len(killed)
            if time.monotonic() > deadline:
                log.warning("%d processes are still in %s after SIGKILL", len(left), leaves[0])
                return len(killed)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    self._kill(pid, signal.SIGKILL)
            killed |= left
            time.sleep(0.001)  # a fork that raced the read shows up on the next one

    def remove(self, vsm_id: str, live: Container[str]) -> None:
        """Empty and remove the VSM's cgroups, and those of gone ancestors left for it."""
        rel = self._rel.pop(vsm_id, None)
        self._oom_seen.pop(vsm_id, None)
        if rel is None:
            return
        self._empty(self._dirs(f"{rel}/{LEAF}"))
        parts = rel.split("/")
        while parts and (parts[-1] == vsm_id or parts[-1] not in live):
            # Its leaf first, then its directory: a gone ancestor's went when it was removed.
            for d in [*self._dirs("/".join([*parts, LEAF])), *self._dirs("/".join(parts))]:
                if not self._remove_dir(d):
                    return  # a child (an abandoned VSM) still lives below: it stays
            parts.pop()

    def _remove_dir(self, d: Path) -> bool:
        try:
            self._rmdir(d)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                log.warning("cannot remove cgroup %s: %s", d, exc.strerror)
            return False
        return True

    def new_oom_kills(self, vsm_id: str) -> int:
        """Processes the OOM killer took in the VSM's leaf since the last call."""
        rel = self._rel.get(vsm_id)
        if rel is None or "memory" not in self._roots:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        total = _oom_kills(f"{self._roots['memory']}/{rel}/{LEAF}/{name}")
        if total is None:
            return 0
        new = total - self._oom_seen.get(vsm_id, 0)
        self._oom_seen[vsm_id] = total
        return max(new, 0)

    def oom_anywhere(self) -> bool:
        """Whether a VSM's leaf may hold an OOM kill not yet counted (since the last call).

        With summed events one read of the namespace's counter answers for every leaf: the
        sampler read each VSM's file on each sample, 2,000 files a second with 2,000 VSMs, for
        a counter that almost never moves. Without them (v1, memory_localevents) it cannot tell,
        and says True.
        """
        if "memory" not in self._roots:
            return False
        if not self.summed_events:
            return True
        total = _oom_kills(f"{self._roots['memory']}/memory.events")
        if total is None:
            return True
        moved = total != self._oom_total
        self._oom_total = total
        return moved


def _probe(
    version: int, bases: dict[str, Path], namespace: str, memory_budget_mb: int, summed: bool
) -> Cgroups | str:
    """Set the namespace's cgroups up; the reason when the hierarchy cannot be used."""
    cg = Cgroups(version, bases, namespace, summed_events=summed)
    try:
        cg.start(memory_budget_mb)
    except OSError as exc:
        cg.stop()
        return f"cgroup v{version} is not writable ({exc.strerror or exc})"
    return cg


def detect(
    namespace: str,
    memory_budget_mb: int = 0,
    proc_cgroup: str | None = None,
    mountinfo: str | None = None,
) -> Cgroups | str:
    """The usable cgroups (v2 preferred, then v1), set up for the namespace, or why there are
    none."""
    try:
        proc_cgroup = _read(Path("/proc/self/cgroup")) if proc_cgroup is None else proc_cgroup
        mountinfo = _read(Path("/proc/self/mountinfo")) if mountinfo is None else mountinfo
    except OSError as exc:
        return f"cannot read /proc: {exc.strerror}"
    reasons = []
    for version, find in ((2, find_v2), (1, find_v1)):
        bases = find(proc_cgroup, mountinfo)
        if not bases:
            reasons.append(f"cgroup v{version} has no memory, cpu or pids controller for us")
            continue
        summed = version == 2 and summed_events(mountinfo)
        found = _probe(version, bases, namespace, memory_budget_mb, summed)
        if isinstance(found, Cgroups):
            return found
        reasons.append(found)
    return "; ".join(reasons)


def setup(config: Config) -> Cgroups | None:
    """At the daemon's start: the cgroups to use, with one log line saying what is used."""
    fallback = "hard limits are rlimits at spawn; memory, cpu and processes are sampled"
    if config.cgroups == "off":
        log.info('cgroups: off (cgroups = "off"); %s', fallback)
        return None
    found = detect(config.namespace, config.memory_budget_mb)
    if isinstance(found, str):
        log.info("cgroups: not used (%s); %s", found, fallback)
        return None
    log.info("cgroups: each VSM in its own, %s", found.describe())
    return found
