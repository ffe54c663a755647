"""Start the real daemon as a subprocess, talk to it as a user would, and clean up after it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pika
import pika.exceptions
import psutil

from vsmctl.client import VsmClient
from vsmd.bus.namespace import remove_namespace
from vsmd.bus.topology import Topology
from vsmd.daemon.journal import journaled_ids
from vsmd.errors import VsmdError
from vsmd.supervisor.standby import TITLE as STANDBY_TITLE

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")


def is_standby(p: psutil.Process) -> bool:
    """The child a fork server forks ahead of the next spawn: no VSM until a spawn takes it."""
    with contextlib.suppress(psutil.Error):
        return " ".join(p.cmdline()).startswith(STANDBY_TITLE)
    return False


def close_connection_of(pid: int, broker_port: int, reason: str = "a test") -> None:
    """Close, at the broker (rabbitmqctl on the shared node), the one AMQP connection that
    process ``pid`` holds."""
    ports = [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == broker_port
    ]
    assert len(ports) == 1, ports
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "peer_port", "pid"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    [conn_pid] = [
        line.split()[1] for line in listed.splitlines() if line.split()[:1] == [str(ports[0])]
    ]
    subprocess.run(
        ["rabbitmqctl", "close_connection", conn_pid, reason],
        capture_output=True,
        timeout=60,
        check=True,
    )


def poll_for(
    fn: Callable[[], T | None],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


# Every namespace handed out and not yet cleaned up: the end of the session removes what a
# test left on the broker (a daemon killed with -9, a test that failed half-way); see
# tests/conftest.py. Test processes are single-threaded, so a plain set will do.
ISSUED: set[str] = set()
# Where the daemon of each namespace kept its state: a worker's task queue outlives its daemon's
# stop by design, and the daemon's journal names it (vsmd namespace remove reads it the same way).
STATE_DIRS: dict[str, Path] = {}


def new_namespace() -> str:
    ns = f"t{uuid.uuid4().hex[:10]}"
    ISSUED.add(ns)
    return ns


def vsm_env(namespace: str, broker_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VSM_NAMESPACE=namespace,
        VSM_BROKER_URL=broker_url,
        # The shared broker is not set up for secure mode (tests/integration/test_security.py
        # runs that on a node of its own).
        VSM_TRUST="cooperative",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("VSM_CONFIG", None)
    return env


def run_tool(
    tool: str, *args: str, namespace: str, broker_url: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``vsmd`` or ``vsmctl`` as a user would, in the test's namespace; output captured."""
    return subprocess.run(
        [str(BIN / tool), *args],
        env=vsm_env(namespace, broker_url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class DaemonProc:
    namespace: str
    broker_url: str
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    clients: list[VsmClient] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return vsm_env(self.namespace, self.broker_url)

    def client(self, timeout: float = 30.0) -> VsmClient:
        c = VsmClient(self.broker_url, self.namespace, timeout)
        self.clients.append(c)
        return c

    def vsmctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run_tool(
            "vsmctl", *args, namespace=self.namespace, broker_url=self.broker_url, timeout=timeout
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"vsmd exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(VsmdError), VsmClient(self.broker_url, self.namespace, 2) as c:
                return bool(c.ping()["pong"])
            return False

        poll_for(answers, timeout, 0.1, "vsmd to answer ping")

    def stop(self, timeout: float = 60.0) -> int:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(
    broker_url: str,
    state_dir: Path,
    namespace: str | None = None,
    config: Mapping[str, object] | None = None,
) -> DaemonProc:
    ns = namespace or new_namespace()
    ISSUED.add(ns)
    STATE_DIRS[ns] = state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    # The shared broker is not set up for the trust boundary: tests of secure mode start an
    # embedded node of their own (tests/integration/test_security.py).
    cfg = {
        "agent_modules": ["tests.support.agents"],
        "stop_timeout": 5.0,
        "trust": "cooperative",
        **(config or {}),
    }
    lines = ["[vsmd]"]
    for key, value in cfg.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        else:
            lines.append(f"{key} = {value}")
    config_file = state_dir / "vsmd.toml"
    config_file.write_text("\n".join(lines) + "\n")
    log_path = state_dir / "vsmd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "vsmd"),
                "run",
                "--config",
                str(config_file),
                "--state-dir",
                str(state_dir),
                "--log-level",
                "DEBUG",
            ],
            env=vsm_env(ns, broker_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    d = DaemonProc(ns, broker_url, state_dir, proc, log_path)
    d.wait_ready()
    return d


def queue_exists(broker_url: str, queue: str) -> bool:
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = conn.channel()
        try:
            ch.queue_declare(queue, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            # 405: it exists, held exclusively by its VSM's connection (a VSM's inbox).
            return bool(exc.reply_code == 405)
    finally:
        conn.close()


def cleanup_namespace(broker_url: str, namespace: str, vsm_ids: tuple[str, ...] = ()) -> None:
    """Remove everything of the namespace from the broker, as `vsmd namespace remove --force`
    does; ``vsm_ids`` are inboxes of VSMs that may still be going away."""
    with contextlib.suppress(VsmdError):
        remove_namespace(broker_url, namespace, force=True, vsm_ids=_journaled(namespace))
        ISSUED.discard(namespace)
    if not vsm_ids:
        return
    topo = Topology(namespace)
    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        ch = conn.channel()
        for q in (topo.inbox(i) for i in vsm_ids):
            ch.queue_delete(q)
        conn.close()


def _journaled(namespace: str) -> list[str]:
    state_dir = STATE_DIRS.get(namespace)
    return journaled_ids(state_dir, namespace) if state_dir is not None else []


def sweep_namespaces(broker_url: str) -> list[str]:
    """Remove every issued namespace that is still there; returns those that had anything."""
    swept = []
    for ns in sorted(ISSUED):
        try:
            if remove_namespace(broker_url, ns, force=True, vsm_ids=_journaled(ns)):
                swept.append(ns)
        except VsmdError:
            return swept  # no broker: nothing to clean on it
        ISSUED.discard(ns)
    return swept


@contextlib.contextmanager
def running_daemon(
    broker_url: str,
    state_dir: Path,
    namespace: str | None = None,
    config: Mapping[str, object] | None = None,
) -> Iterator[DaemonProc]:
    d = start_daemon(broker_url, state_dir, namespace, config)
    try:
        yield d
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace)
