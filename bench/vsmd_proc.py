"""Start a real vsmd as a subprocess (as an operator would), find its processes, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.bus import BenchError, delete_namespace
from vsmctl.client import VsmClient
from vsmd.errors import VsmdError
from vsmd.security import credentials
from vsmd.supervisor.standby import TITLE as STANDBY_TITLE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FORKSERVER_MODULE = "vsmd.supervisor.forkserver"

# Room for a 10x10x10 tree under a root (1,111 VSMs) on a private node.
BIG_CONFIG: dict[str, object] = {
    "max_total": 1200,
    "max_children": 1000,
    "spawn_timeout": 120.0,
    "stop_timeout": 10.0,
    "log_level": "WARNING",
}


def new_namespace(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:8]}"


def is_standby(p: psutil.Process) -> bool:
    """The child the fork server forks ahead of the next spawn: no VSM until a spawn takes it."""
    with contextlib.suppress(psutil.Error):
        return " ".join(p.cmdline()).startswith(STANDBY_TITLE)
    return False


def bench_env(namespace: str, broker_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSM_")}
    env.update(
        VSM_NAMESPACE=namespace,
        VSM_BROKER_URL=broker_url,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


def _toml(config: dict[str, object]) -> str:
    lines = ["[vsmd]"]
    for key, value in config.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(json.dumps(str(v)) for v in value)}]")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


@dataclass
class VsmdProc:
    namespace: str
    broker_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def env(self) -> dict[str, str]:
        return bench_env(self.namespace, self.broker_url)

    def client(self, timeout: float = 120.0) -> VsmClient:
        return VsmClient(self.broker_url, self.namespace, timeout)

    def own_broker_pid(self) -> int | None:
        """The beam of an embedded node this daemon started itself, if any."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name().startswith("beam"):
                        return child.pid
        return None

    def forkserver_pid(self) -> int | None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.Error):
                    if FORKSERVER_MODULE in " ".join(child.cmdline()):
                        return child.pid
        return None

    def vsm_pids(self) -> list[int]:
        """Every VSM process: the fork server's children but its standby."""
        fs = self.forkserver_pid()
        if fs is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(fs).children() if not is_standby(p)]
        return []

    def log_problems(self, limit: int = 5) -> list[str]:
        """WARNING/ERROR lines of the daemon's log (it runs at WARNING), first few."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        bad = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
        head = [ln[:240] for ln in bad[:limit]]
        if len(bad) > limit:
            head.append(f"... and {len(bad) - limit} more")
        return head

    def stop(self, timeout: float = 180.0) -> list[int]:
        """SIGTERM and wait; kill what is left. Returns pids that outlived the daemon."""
        family: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            family = psutil.Process(self.pid).children(recursive=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _gone, alive = psutil.wait_procs(family, timeout=5.0)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        delete_namespace(self.broker_url, self.namespace)
        return [p.pid for p in alive]


def start_vsmd(
    broker_url: str,
    state_dir: Path,
    tag: str,
    config: dict[str, object],
    own_node: bool = False,
) -> VsmdProc:
    """``vsmd run --config`` as an operator runs it; ``own_node``: on an embedded node of its
    own (``broker_url`` unused), which a secure daemon (``trust = "secure"``) sets up."""
    ns = new_namespace(tag)
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = state_dir / "vsmd.toml"
    # The shared broker is not set up for secure mode: runs that want it say so in ``config``.
    cfg_file.write_text(_toml({"state_dir": str(state_dir), "trust": "cooperative", **config}))
    cmd = [str(BIN / "vsmd"), "run", "--config", str(cfg_file)]
    log_path = state_dir / "vsmd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=bench_env(ns, "embedded" if own_node else broker_url),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    d = VsmdProc(ns, broker_url, proc, log_path)
    try:
        if own_node:
            d.broker_url = _own_node_url(d, state_dir)
        _wait_ready(d)
    except BaseException:
        d.stop()
        raise
    return d


def _own_node_url(d: VsmdProc, state_dir: Path, timeout: float = 90.0) -> str:
    """The operator's URL of a secure daemon, or guest's on a cooperative one's own node (the
    daemon logs at WARNING here, so the node's port comes from its config file)."""
    deadline = time.monotonic() + timeout
    creds = state_dir / f"operator-{d.namespace}.json"
    conf = state_dir / "broker" / "rabbitmq.conf"
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise BenchError(f"vsmd exited with {d.proc.returncode}: {d.log_problems()}")
        if creds.exists():
            return credentials.read(creds).broker_url
        with contextlib.suppress(OSError):
            text = conf.read_text()
            found = re.search(r"listeners.tcp.default = ([0-9.]+:\d+)", text)
            if found and "auth_backends" not in text:
                return f"amqp://guest:guest@{found.group(1)}/%2F"
        time.sleep(0.1)
    raise BenchError(f"vsmd on its own node did not come up within {timeout:g} s")


def _wait_ready(d: VsmdProc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise BenchError(f"vsmd exited with {d.proc.returncode}: {d.log_problems()}")
        with contextlib.suppress(VsmdError), d.client(2.0) as c:
            if c.ping().get("pong") and d.forkserver_pid() is not None:
                return
        time.sleep(0.1)
    raise BenchError(f"vsmd did not answer within {timeout:g} s")
