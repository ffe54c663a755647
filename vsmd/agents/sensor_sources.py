"""What a sensor samples: the host (psutil), a file it tails, an HTTP endpoint, a command.

Each source's ``sample`` returns the values read this time (a file may give several lines, or
none) or raises a VsmdError that the sensor shows as its health; blocking reads go to worker
threads, and every wait has the sensor's timeout.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from vsmd.agents.http_client import LazyHttp
from vsmd.errors import AgentError

SYSTEM_METRICS = (
    "cpu_percent",
    "memory_percent",
    "swap_percent",
    "load1",
    "disk_percent",
    "processes",
)
READ_CHUNK = 1 << 16  # a file's bytes read per sample at most: a burst is spread over samples
MAX_LINES = 100  # readings per sample from a file, for the same reason
STDERR_TAIL = 500


class SourceError(AgentError):
    """The source could not be read this time; the sensor reports it and samples again."""


class Source(Protocol):
    kind: str
    target: str  # what it reads, as the state shows it

    async def sample(self) -> list[Any]: ...

    async def close(self) -> None: ...


def parse_text(text: str) -> Any:
    """JSON when it is JSON, else the text itself (without surrounding white space)."""
    text = text.strip()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def fit(value: Any, max_bytes: int) -> tuple[Any, bool]:
    """``value`` if its JSON takes at most ``max_bytes``, else its text cut to that (a state
    value travels in every update and in the parent's replica)."""
    raw = orjson.dumps(value)
    if len(raw) <= max_bytes:
        return value, False
    text = value if isinstance(value, str) else raw.decode()
    return text.encode()[:max_bytes].decode(errors="ignore"), True


class SystemSource:
    kind = "system"

    def __init__(self, metrics: list[str] | None) -> None:
        import psutil

        self.metrics = tuple(metrics or SYSTEM_METRICS)
        self.target = ",".join(self.metrics)
        self._psutil = psutil
        if "cpu_percent" in self.metrics:
            psutil.cpu_percent(None)  # the first call only starts the measurement

    async def sample(self) -> list[Any]:
        return [await asyncio.to_thread(self._read)]

    def _read(self) -> dict[str, float]:
        ps = self._psutil
        read: dict[str, Callable[[], float]] = {
            "cpu_percent": lambda: ps.cpu_percent(None),
            "memory_percent": lambda: ps.virtual_memory().percent,
            "swap_percent": lambda: ps.swap_memory().percent,
            "load1": lambda: os.getloadavg()[0],
            "disk_percent": lambda: ps.disk_usage("/").percent,
            "processes": lambda: float(len(ps.pids())),
        }
        return {m: round(float(read[m]()), 2) for m in self.metrics}

    async def close(self) -> None:
        return None


@dataclass
class _Tail:
    pos: int | None = None  # next byte to read; None until the file was first seen
    inode: int | None = None
    first: bool = True  # no sample yet: a file there at the start is read from its end


class FileTail:
    """The lines appended to a file since the last sample, each a reading. A file there at
    the first sample is read from its end; one that appears later, is replaced (a new inode)
    or shrinks (truncated) is read from its start."""

    kind = "file"

    def __init__(self, path: str, max_bytes: int) -> None:
        self.target = path
        self.max_bytes = max_bytes
        self._tail = _Tail()

    async def sample(self) -> list[Any]:
        return await asyncio.to_thread(self._read)

    def _read(self) -> list[Any]:
        first, self._tail.first = self._tail.first, False
        try:
            with open(self.target, "rb") as f:
                st = os.fstat(f.fileno())
                pos = self._tail.pos
                if pos is None or st.st_ino != self._tail.inode or st.st_size < pos:
                    pos = st.st_size if first else 0  # new, replaced or truncated
                    self._tail.inode = st.st_ino
                f.seek(pos)
                chunk = f.read(READ_CHUNK)
        except OSError as exc:
            self._tail.pos = None  # when it is back, from its start
            raise SourceError(f"cannot read {self.target}: {exc.strerror or exc}") from None
        lines, used = _lines(chunk, full=len(chunk) == READ_CHUNK)
        self._tail.pos = pos + used
        return [parse_text(line.decode(errors="replace")) for line in lines if line.strip()]

    async def close(self) -> None:
        return None


def _lines(chunk: bytes, full: bool) -> tuple[list[bytes], int]:
    """The complete lines of ``chunk`` (at most MAX_LINES) and the bytes they take. A chunk
    that fills a whole read without a newline is taken as one (over-long) line, so that a
    file without newlines cannot stall the tail."""
    lines: list[bytes] = []
    used = 0
    while len(lines) < MAX_LINES:
        end = chunk.find(b"\n", used)
        if end < 0:
            break
        lines.append(chunk[used:end])
        used = end + 1
    if not lines and full:
        return [chunk], len(chunk)
    return lines, used


class HttpSource:
    """A GET every sample; the body is JSON if it parses, else text. 4xx and 5xx fail."""

    kind = "http"

    def __init__(self, url: str, timeout: float, max_bytes: int) -> None:
        self.target = url
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.http = LazyHttp()  # made at the first sample, as every client

    async def sample(self) -> list[Any]:
        got = await self.http.fetch(
            "GET", self.target, timeout=self.timeout, max_body=self.max_bytes
        )
        if got.status >= 400:
            raise SourceError(f"GET {self.target} answered HTTP {got.status}")
        text = got.body.decode(errors="replace")
        return [text if got.truncated else parse_text(text)]

    async def close(self) -> None:
        await self.http.aclose()


class CommandSource:
    """A command run every sample (an argv list, no shell); its standard output is the
    reading, JSON if it parses. A non-zero exit or the timeout fails (the command is killed)."""

    kind = "command"

    def __init__(self, argv: list[str], timeout: float, max_bytes: int) -> None:
        self.argv = argv
        self.target = " ".join(argv)[:500]
        self.timeout = timeout
        self.max_bytes = max_bytes

    async def sample(self) -> list[Any]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SourceError(f"cannot run {self.argv[0]}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.timeout):
                out, err, code = await asyncio.gather(
                    _read(proc.stdout, self.max_bytes + 1),
                    _read(proc.stderr, STDERR_TAIL, tail=True),
                    proc.wait(),
                )
        except TimeoutError:
            raise SourceError(f"{self.argv[0]} did not finish within {self.timeout:g} s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            said = err.decode(errors="replace").strip()
            raise SourceError(f"{self.argv[0]} exited with {code}" + (f": {said}" if said else ""))
        text = out.decode(errors="replace")
        return [text if len(out) > self.max_bytes else parse_text(text)]

    async def close(self) -> None:
        return None


async def _read(stream: asyncio.StreamReader | None, keep: int, tail: bool = False) -> bytes:
    """Everything the stream gives, keeping ``keep`` bytes (the first, or with ``tail`` the
    last): a chatty command must not fill the VSM's memory, nor block on a full pipe."""
    if stream is None:
        return b""
    kept = b""
    while chunk := await stream.read(READ_CHUNK):
        kept = (kept + chunk)[-keep:] if tail else kept + chunk[: max(0, keep - len(kept))]
    return kept


def make_source(spec: dict[str, Any] | None, timeout: float, max_bytes: int) -> Source:
    """The source a sensor's ``source`` setting names (checked by its schema); none: system."""
    spec = spec or {}
    if "file" in spec:
        return FileTail(str(spec["file"]), max_bytes)
    if "http" in spec:
        return HttpSource(str(spec["http"]), timeout, max_bytes)
    if "command" in spec:
        return CommandSource([str(a) for a in spec["command"]], timeout, max_bytes)
    return SystemSource(spec.get("system"))
