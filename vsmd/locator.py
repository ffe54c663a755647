"""Where a running vsmd can be reached: a small file it publishes and vsmctl reads.

The daemon writes ``where-<namespace>.json`` (mode 0600, whole) into its state directory and
into a per-user runtime directory once it answers, and deletes both at a clean stop. vsmctl,
given no broker URL and no credentials, looks there (``locate``), so it finds a daemon whose
broker port is chosen anew at every start. A file whose process is gone, or whose pid now
names another process, is stale and ignored: a daemon killed with SIGKILL leaves one behind.

The file of a secure daemon carries no login: the broker URL without credentials and the path
of the operator credentials file, which vsmctl reads itself (so what the file tells others is
no more than the file it names lets them read).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from vsmd.security.private_file import write_private

log = logging.getLogger("vsmd")
# The state directories vsmctl already searches for credentials (vsmd/security/credentials.py).
STATE_DIRS = (".state", "/var/lib/vsmd")
PREFERRED_NAMESPACE = "vsm"  # what `make run` and vsmctl use by default
# Two reads of a process's create time may differ by a second: psutil adds the boot time,
# which the kernel reports rounded and which can move with clock adjustments. A pid reused
# within a second of the first process's start is not a case worth more precision.
START_SLACK = 1.0
MAX_FILE = 64 << 10


@dataclass(frozen=True)
class Where:
    namespace: str
    broker_url: str  # without a login when ``credentials`` is set
    credentials: str | None  # the operator credentials file of a secure daemon
    pid: int
    started: float  # the daemon's create time (psutil): tells a reused pid apart
    state_dir: str
    version: str

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def decode(cls, raw: bytes) -> Where | None:
        """None for anything vsmd did not write."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        strings = ("namespace", "broker_url", "state_dir", "version")
        if not all(isinstance(data.get(k), str) for k in strings):
            return None
        pid, started, creds = data.get("pid"), data.get("started"), data.get("credentials")
        if type(pid) is not int or not isinstance(started, int | float):
            return None
        if creds is not None and not isinstance(creds, str):
            return None
        values = {k: data[k] for k in strings}
        return cls(credentials=creds, pid=pid, started=float(started), **values)


def file_name(namespace: str) -> str:
    return f"where-{namespace}.json"


def runtime_dir(env: Mapping[str, str]) -> Path:
    """This user's runtime directory for vsmd, whether or not it exists (or may be used)."""
    uid = os.geteuid()
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore a relative one
        return Path(xdg) / "vsmd"
    run = Path(f"/run/user/{uid}")
    if run.is_dir():
        return run / "vsmd"
    return Path(tempfile.gettempdir()) / f"vsmd-{uid}"


def refusal(path: Path, create: bool = False) -> str | None:
    """Why ``path`` may not hold our files, or None when it is a directory of ours that only
    we can enter. In a shared /tmp another user may have made it first, or put a symlink
    there, to read or plant where-files: such a directory is never used."""
    if create:
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # the umask may have taken bits we need
        except FileExistsError:
            pass
        except OSError as exc:
            return f"cannot create it: {exc.strerror}"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return str(exc.strerror)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"its mode is {stat.S_IMODE(st.st_mode):o}, not 700"
    return None


def publish(where: Where, env: Mapping[str, str]) -> tuple[Path, ...]:
    """Write ``where`` into its state directory and the runtime directory; the files written.
    A place that cannot be written is logged and left out: the daemon runs on regardless."""
    places = [Path(where.state_dir)]
    rdir = runtime_dir(env)
    why = refusal(rdir, create=True)
    if why is None:
        places.append(rdir)
    else:
        log.warning("not publishing where this vsmd is in %s: %s", rdir, why)
    written = []
    for place in places:
        path = place / file_name(where.namespace)
        try:
            write_private(path, where.encode())
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc.strerror)
            continue
        written.append(path)
    return tuple(written)


def remove(paths: Iterable[Path], where: Where) -> None:
    """Delete the files that still describe ``where``; a later daemon's stay."""
    for path in paths:
        if _load(path) == where:
            with contextlib.suppress(OSError):
                path.unlink()


def _load(path: Path) -> Where | None:
    """The file's record, or None when it is missing, unreadable, or not private and ours
    (or root's): a file others could have written must not point vsmctl at their broker."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)  # of what was opened: nothing can be swapped in after the check
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
            return None
        if mode & 0o077 or not mode & 0o400:
            return None
        return Where.decode(os.read(fd, MAX_FILE))
    except OSError:
        return None
    finally:
        os.close(fd)


def alive(where: Where) -> bool:
    """The process that wrote ``where`` still runs (not a new one under the same pid)."""
    import psutil  # here: vsmctl pays for it only when there is a file to check

    try:
        proc = psutil.Process(where.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - where.started) < START_SLACK
    except psutil.Error:
        return False


@dataclass(frozen=True)
class Located:
    """What ``locate`` found: the daemon, or None, and where it looked."""

    where: Where | None
    looked: tuple[Path, ...]
    stale: tuple[Where, ...] = ()

    def describe(self) -> str:
        """For "no vsmd answering": the places searched, and the stale files seen."""
        dirs = ", ".join(str(d) for d in self.looked)
        text = f"no running vsmd published itself in {dirs}"
        if self.stale:
            gone = ", ".join(f"{file_name(w.namespace)} of pid {w.pid}" for w in self.stale)
            text += f" (ignored, their daemon is gone: {gone})"
        return text


def search_dirs(env: Mapping[str, str]) -> tuple[Path, ...]:
    dirs = [runtime_dir(env)]
    for d in (env.get("VSM_STATE_DIR", ""), *STATE_DIRS):
        if d and Path(d) not in dirs:
            dirs.append(Path(d))
    return tuple(dirs)


def locate(env: Mapping[str, str], namespace: str | None) -> Located:
    """The running daemon of ``namespace``, or with None the only one running; of several,
    the one of namespace ``vsm``, else the one started last. The runtime directory is read
    only when it is ours and closed to others."""
    looked = search_dirs(env)
    found: dict[tuple[str, int, float], Where] = {}  # the same daemon is in two places
    for d in looked:
        if d == looked[0] and refusal(d) is not None:
            continue
        paths = [d / file_name(namespace)] if namespace else sorted(d.glob(file_name("*")))
        for path in paths:
            where = _load(path)
            if where is not None and namespace in (None, where.namespace):
                found.setdefault((where.namespace, where.pid, where.started), where)
    live = [w for w in found.values() if alive(w)]
    stale = tuple(w for w in found.values() if w not in live)
    preferred = [w for w in live if w.namespace == PREFERRED_NAMESPACE] or live
    best = max(preferred, key=lambda w: w.started, default=None)
    return Located(best, looked, stale)
