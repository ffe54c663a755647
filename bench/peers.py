"""The peers, on the same broker: the floor (a plain pre-imported parent forking N children
that each do a VSM's broker work, bench.forkfloor), raw multiprocessing with the forkserver
start method (pika pre-imported) starting N processes, and supervisord supervising N programs;
the last two run bench.child's plain workload."""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil

from bench import child
from bench.bus import BenchError, ReadyListener
from bench.resources import CpuWindow, memory_monitors
from bench.vsmd_proc import BIN, REPO
from vsmd.bus.connection import close_quietly, connect


@dataclass
class PeerRun:
    up: float  # s from the first start request until the last "ready"
    down: float  # s from the first stop request until all are gone
    setup_ms: list[float]  # each child's own connect + declare + consume + publish
    cpu: dict[str, float]  # CPU seconds per part while coming up


def ready_timeout(n: int) -> float:
    return 60.0 + 0.3 * n


def _setup_ms(arrivals: list[tuple[float, dict[str, Any]]]) -> list[float]:
    return [float(b.get("setup_ms", 0.0)) for _t, b in arrivals]


# --- the floor ------------------------------------------------------------------------------


class Floor:
    """N children forked at once by bench.forkfloor, each doing a VSM's broker work."""

    def __init__(self, url: str, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.exchange = f"bench-floor-{uuid.uuid4().hex[:12]}"
        self._conn = connect(url, heartbeat=0, timeout=10.0)
        self._conn.channel().exchange_declare(self.exchange, "topic")
        self.listener = ReadyListener(url, bind=(self.exchange, "up.*.ready"))
        self.proc = subprocess.Popen(
            [str(BIN / "python"), "-m", "bench.forkfloor", url, self.exchange],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._lines = _LineReader(self.proc)
        if self._lines.read(60.0) != "ok":
            raise BenchError("the floor's parent did not start")

    def _ask(self, command: str, timeout: float) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self._lines.read(timeout)

    def run(self, n: int) -> PeerRun:
        self.listener.reset()
        window = CpuWindow(
            {
                "broker": [self.broker_pid],
                "bench": [os.getpid()],
                "parent": [self.proc.pid],
                **memory_monitors(),
            }
        )
        start = time.perf_counter()
        pids = [int(p) for p in self._ask(f"up {n}", ready_timeout(n)).split()]
        try:
            arrivals = self.listener.wait_for(n, ready_timeout(n))
            up = max(at for at, _b in arrivals) - start
            cpu = window.stop({"children": pids})
        finally:
            start = time.perf_counter()
            answer = self._ask("down", ready_timeout(n))
            down = time.perf_counter() - start
        if answer != "down":
            raise BenchError(f"the floor's parent answered {answer!r} to down")
        return PeerRun(up, down, _setup_ms(arrivals), cpu)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the parent stops what is left and exits
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.listener.close()
        with contextlib.suppress(Exception):
            self._conn.channel().exchange_delete(self.exchange)
        close_quietly(self._conn)


class _LineReader:
    """Lines from a child's stdout, each awaited with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def read(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise BenchError(f"no answer from the floor's parent within {timeout:g} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise BenchError("the floor's parent exited")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().strip()


# --- multiprocessing ------------------------------------------------------------------------


class Multiprocessing:
    """N processes from multiprocessing's fork server, each running bench.child.

    Must run under ``python -m bench``: started from a script path, every child would first
    re-import that script as ``__mp_main__`` and every start would be far too slow.
    """

    def __init__(self, url: str, broker_pid: int | None) -> None:
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if getattr(main, "__file__", None) and not getattr(spec, "name", "").endswith("__main__"):
            raise BenchError("run multiprocessing under `python -m bench`, not from a script path")
        self.url = url
        self.broker_pid = broker_pid
        self.ctx: multiprocessing.context.ForkServerContext = multiprocessing.get_context(
            "forkserver"
        )
        self.ctx.set_forkserver_preload(["pika", "bench.child"])
        warm = self.ctx.Process(target=child.noop)  # starts the fork server outside the timing
        warm.start()
        warm.join()
        self.listener = ReadyListener(url)

    def run(self, n: int) -> PeerRun:
        self.listener.reset()
        procs = [
            self.ctx.Process(target=child.child_main, args=(self.url, self.listener.queue, f"f{i}"))
            for i in range(n)
        ]
        server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
        window = CpuWindow(
            {
                "broker": [self.broker_pid],
                "bench": [os.getpid()],
                "forkserver": [server],
                **memory_monitors(),
            }
        )
        start = time.perf_counter()
        try:
            for p in procs:
                p.start()
            arrivals = self.listener.wait_for(n, ready_timeout(n))
            up = max(at for at, _b in arrivals) - start
            cpu = window.stop({"children": [p.pid for p in procs if p.pid is not None]})
            start = time.perf_counter()
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(30.0)
            down = time.perf_counter() - start
        finally:
            for p in procs:
                if p.pid is not None and p.exitcode is None:
                    p.kill()
                    p.join(5.0)
        return PeerRun(up, down, _setup_ms(arrivals), cpu)

    def close(self) -> None:
        self.listener.close()
        import multiprocessing.forkserver as mp_forkserver
        import multiprocessing.resource_tracker as mp_tracker

        # Private helpers, but the only way to end both servers before this process exits.
        for server in (mp_forkserver._forkserver, mp_tracker._resource_tracker):
            stop = getattr(server, "_stop", None)
            if callable(stop):
                stop()


# --- supervisord ----------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=900)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(900)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path)


def _conf(workdir: Path, url: str, ready_queue: str, n: int) -> str:
    command = f"{BIN / 'python'} -m bench.child {url} {ready_queue} p%(process_num)d"
    return f"""[unix_http_server]
file={workdir / "supervisor.sock"}

[supervisord]
nodaemon=true
logfile={workdir / "supervisord.log"}
pidfile={workdir / "supervisord.pid"}
childlogdir={workdir}
loglevel=warn
minfds=1024

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:peer]
command={command.replace("%2F", "%%2F")}
process_name=%(program_name)s_%(process_num)d
numprocs={n}
directory={REPO}
autostart=false
autorestart=false
startsecs=0
startretries=0
stopsignal=TERM
stopwaitsecs=10
stdout_logfile=NONE
stderr_logfile=NONE
"""


class Supervisord:
    """One supervisord with ``n`` programs (autostart off); start all / stop all on demand."""

    def __init__(self, url: str, workdir: Path, n: int, broker_pid: int | None) -> None:
        self.n = n
        self.broker_pid = broker_pid
        self.listener = ReadyListener(url)
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "supervisord.conf"
        conf.write_text(_conf(workdir, url, self.listener.queue, n))
        with (workdir / "stdout.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "supervisord"), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.rpc: Any = cast(
            Any,
            xmlrpc.client.ServerProxy(
                "http://localhost", transport=_UnixTransport(str(workdir / "supervisor.sock"))
            ),
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"supervisord exited with {self.proc.returncode}")
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if self.rpc.supervisor.getState()["statename"] == "RUNNING":
                    break
            if time.monotonic() > deadline:
                raise BenchError("supervisord did not answer within 60 s")
            time.sleep(0.1)

    def run(self, n: int) -> PeerRun:
        """Up: startAllProcesses until all ready; down: stopAllProcesses(wait=True)."""
        if n != self.n:
            raise BenchError(f"this supervisord has {self.n} programs, not {n}")
        self.listener.reset()
        window = CpuWindow(
            {
                "broker": [self.broker_pid],
                "bench": [os.getpid()],
                "supervisord": [self.proc.pid],
                **memory_monitors(),
            }
        )
        start = time.perf_counter()
        self.rpc.supervisor.startAllProcesses(False)
        arrivals = self.listener.wait_for(self.n, ready_timeout(self.n))
        up = max(at for at, _b in arrivals) - start
        kids: list[int] = []
        with contextlib.suppress(psutil.Error):
            kids = [p.pid for p in psutil.Process(self.proc.pid).children()]
        cpu = window.stop({"children": kids})
        start = time.perf_counter()
        self.rpc.supervisor.stopAllProcesses(True)
        down = time.perf_counter() - start
        return PeerRun(up, down, _setup_ms(arrivals), cpu)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.rpc.supervisor.stopAllProcesses(True)
        with contextlib.suppress(Exception):
            self.rpc.supervisor.shutdown()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.listener.close()
