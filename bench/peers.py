"""The peers, same workload (bench.child) on the same broker: supervisord supervising N
programs, and the floor, raw multiprocessing with the forkserver start method (pika
pre-imported) starting N processes."""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import multiprocessing.context
import signal
import socket
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, cast

from bench import child
from bench.bus import BenchError, ReadyListener
from bench.vsmd_proc import BIN, REPO


def ready_timeout(n: int) -> float:
    return 60.0 + 0.3 * n


def _setup_ms(arrivals: list[tuple[float, dict[str, Any]]]) -> list[float]:
    return [float(b.get("setup_ms", 0.0)) for _t, b in arrivals]


# --- the floor ------------------------------------------------------------------------------


class Floor:
    """N processes from multiprocessing's fork server, each running bench.child."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ctx: multiprocessing.context.ForkServerContext = multiprocessing.get_context(
            "forkserver"
        )
        self.ctx.set_forkserver_preload(["pika", "bench.child"])
        warm = self.ctx.Process(target=child.noop)  # starts the fork server outside the timing
        warm.start()
        warm.join()
        self.listener = ReadyListener(url)

    def run(self, n: int) -> tuple[float, float, list[float]]:
        """(s until all ready, s until all stopped, each child's own setup ms)."""
        self.listener.reset()
        procs = [
            self.ctx.Process(target=child.child_main, args=(self.url, self.listener.queue, f"f{i}"))
            for i in range(n)
        ]
        start = time.perf_counter()
        try:
            for p in procs:
                p.start()
            arrivals = self.listener.wait_for(n, ready_timeout(n))
            up = max(at for at, _b in arrivals) - start
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
        return up, down, _setup_ms(arrivals)

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

    def __init__(self, url: str, workdir: Path, n: int) -> None:
        self.n = n
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

    def run(self, n: int) -> tuple[float, float, list[float]]:
        """(s from startAllProcesses until all ready, s of stopAllProcesses(wait), setup ms)."""
        if n != self.n:
            raise BenchError(f"this supervisord has {self.n} programs, not {n}")
        self.listener.reset()
        start = time.perf_counter()
        self.rpc.supervisor.startAllProcesses(False)
        arrivals = self.listener.wait_for(self.n, ready_timeout(self.n))
        up = max(at for at, _b in arrivals) - start
        start = time.perf_counter()
        self.rpc.supervisor.stopAllProcesses(True)
        down = time.perf_counter() - start
        return up, down, _setup_ms(arrivals)

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
