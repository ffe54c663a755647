"""A private RabbitMQ node on this machine, for tests and broker-outage drills.

The Debian wrappers in /usr/sbin switch to the ``rabbitmq`` user when run as root: HOME is reset
(so the node and rabbitmqctl would use the system node's cookie) and the node cannot write into
root-owned private directories. We therefore run the real scripts from /usr/lib/rabbitmq/bin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psutil

from vsmd.broker import secure
from vsmd.broker.probe import broker_answers, tcp_answers
from vsmd.broker.secure import SecureSetup
from vsmd.errors import BrokerError
from vsmd.security.private_file import write_private

log = logging.getLogger("vsmd.broker")
_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
_HOST = "127.0.0.1"
# How long the node waits from a client's TCP connect until its AMQP handshake is done (the
# broker's default: 10 s). In bursts of 1,000 spawns on two cores VSM processes went longer
# than 10 s between their connect and their protocol header: the node closed 13 of them in one
# burst ({handshake_timeout,frame_header} in its log), and those spawns failed; another such
# burst lost 18 spawns with the same error in the VSMs' logs. A VSM itself waits up to 60 s
# for its first connection (vsmd/vsm/bus.py, START_CONNECT_TIMEOUT).
HANDSHAKE_TIMEOUT_MS = 60_000
_POLL = 0.1
_CONN_PID = re.compile(r"<[A-Za-z0-9_.@-]+\.\d+\.\d+\.\d+>")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    port: int
    dist_port: int
    base_dir: Path


def _tool(name: str) -> str:
    direct = _RABBIT_BIN / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        raise BrokerError(f"{name} is in neither {_RABBIT_BIN} nor PATH; install rabbitmq-server")
    return found


def _free_port(taken: set[int]) -> int:
    # Stay below the ephemeral range: the port is reused across restarts, and while the node is
    # down an outgoing connection must not grab it as its local port.
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    guesses = [random.randint(10000, low - 1) for _ in range(100)] if low > 11000 else []
    for port in [*guesses, 0, 0]:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((_HOST, port))
            chosen: int = sock.getsockname()[1]
            if chosen not in taken:
                return chosen
    raise BrokerError("found no free TCP port for a private RabbitMQ node")


class EmbeddedBroker:
    """One private RabbitMQ node; restartable on the same name, port and data directory."""

    def __init__(
        self,
        base_dir: Path,
        name: str | None = None,
        port: int | None = None,
        start_timeout: float = 60.0,
        nofile: int = 65536,
        secure: SecureSetup | None = None,
    ) -> None:
        node = name or f"vsmd-{secrets.token_hex(4)}"
        # Without a host part RabbitMQ appends the short hostname, which need not resolve.
        if "@" not in node:
            node += "@localhost"
        amqp_port = port if port is not None else _free_port(set())
        # Absolute, because the paths travel in env vars to processes with another cwd.
        base = Path(base_dir).resolve()
        self._spec = NodeSpec(node, amqp_port, _free_port({amqp_port}), base)
        self._start_timeout = start_timeout
        self._nofile = nofile
        self._proc: subprocess.Popen[bytes] | None = None
        self._secure = secure

    @property
    def url(self) -> str:
        """The daemon's URL: guest on an open node, the first user of a secure one."""
        if self._secure is None:
            return f"amqp://guest:guest@{_HOST}:{self._spec.port}/%2F"
        user = self._secure.users[0]
        vhost = quote(self._secure.vhost, safe="")
        return f"amqp://{quote(user.name)}:{quote(user.password)}@{_HOST}:{self._spec.port}/{vhost}"

    @property
    def spec(self) -> NodeSpec:
        return self._spec

    @property
    def node_log(self) -> Path:
        return self._spec.base_dir / "log" / f"{self._spec.name}.log"

    @property
    def console_log(self) -> Path:
        return self._spec.base_dir / "log" / "console.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        s, base = self._spec, self._spec.base_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(base / "home"),  # erlang keeps this node's own .erlang.cookie here
            RABBITMQ_NODENAME=s.name,
            RABBITMQ_NODE_IP_ADDRESS=_HOST,
            RABBITMQ_NODE_PORT=str(s.port),
            RABBITMQ_DIST_PORT=str(s.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            # /etc/rabbitmq/rabbitmq-env.conf names the shared node; it must never be read.
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_CRASH_DUMP=str(base / "log" / "erl_crash.dump"),
        )
        return env

    def _write_files(self) -> None:
        s, base = self._spec, self._spec.base_dir
        for sub in ("mnesia", "log", "home"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        # Secrets go into these files: the node's directory is its user's alone.
        base.chmod(0o700)
        conf = [
            f"listeners.tcp.default = {_HOST}:{s.port}",
            f"handshake_timeout = {HANDSHAKE_TIMEOUT_MS}",
        ]
        plugins = "[]"
        if self._secure is not None:
            plugins = f"[{secure.PLUGIN},{secure.EVENTS_PLUGIN}]"
            conf += secure.conf_lines(self._secure)
            conf.append(f"load_definitions = {base / 'definitions.json'}")
            write_private(base / "advanced.config", secure.advanced_config(self._secure).encode())
            write_private(base / "definitions.json", secure.definitions(self._secure))
        else:
            (base / "advanced.config").unlink(missing_ok=True)
            (base / "definitions.json").unlink(missing_ok=True)
        (base / "enabled_plugins").write_text(f"{plugins}.\n")
        (base / "rabbitmq-env.conf").write_text("# private vsmd node: nothing to add\n")
        (base / "rabbitmq.conf").write_text("\n".join(conf) + "\n")

    def _registered(self) -> bool:
        """Whether epmd knows a node of our name (one left over from a killed daemon)."""
        epmd = shutil.which("epmd")
        if epmd is None:
            return False
        try:
            out = subprocess.run(
                [epmd, "-names"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        short = self._spec.name.split("@", 1)[0]
        return any(line.split()[1:2] == [short] for line in out.splitlines())

    def _stop_leftover(self) -> None:
        # Same name and data dir, so the same cookie: rabbitmqctl can stop it; otherwise the new
        # node would fail with duplicate_node_name.
        if not self._registered():
            return
        with self.console_log.open("ab") as log:
            log.write(f"--- vsmd: stopping a leftover node {self._spec.name}\n".encode())
        with contextlib.suppress(subprocess.TimeoutExpired, OSError, BrokerError):
            self._rabbitmqctl("stop", timeout=30.0)
        deadline = time.monotonic() + 30.0
        while self._registered() and time.monotonic() < deadline:
            time.sleep(_POLL)

    def start(self) -> None:
        if self.is_running():
            return
        s = self._spec
        self._write_files()
        self._stop_leftover()
        if tcp_answers(_HOST, s.port):
            msg = f"cannot start RabbitMQ node {s.name}: {_HOST}:{s.port} is already taken"
            raise BrokerError(msg, node=s.name, port=s.port)
        server = _tool("rabbitmq-server")
        # A hard limit below the request (no CAP_SYS_RESOURCE) must not keep the node from starting.
        script = (
            f'{{ ulimit -n {self._nofile} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }} && '
            f'echo "vsmd: open-files limit $(ulimit -n)" && exec {shlex.quote(server)}'
        )
        with self.console_log.open("ab") as log:
            log.write(f"--- vsmd: starting {s.name} on {_HOST}:{s.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                ["bash", "-c", script],
                env=self._env(),
                cwd=s.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._await_start(time.monotonic() + self._start_timeout)
        except BaseException:
            # Ctrl-C, or a failure of ours while it starts: no node may be left behind.
            if self._proc is not None:
                self._terminate(self._proc, time.monotonic() + 10.0)
                self._proc = None
            raise

    def _await_start(self, deadline: float) -> None:
        assert self._proc is not None
        s = self._spec
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise self._start_failure(f"rabbitmq-server exited with status {code}")
            remaining = deadline - time.monotonic()
            if tcp_answers(_HOST, s.port, 0.2) and broker_answers(
                self.url, timeout=min(2.0, max(0.5, remaining))
            ):
                if self._secure is not None:
                    self._drop_guest()
                    self._limit_vhost(self._secure)
                return
            if remaining <= 0:
                raise self._start_failure(f"no AMQP answer within {self._start_timeout:g}s")
            time.sleep(_POLL)

    def close_connections(self, pids: list[str], reason: str) -> bool:
        """Close the connections with these pids (as the broker prints them), in one call."""
        if not all(_CONN_PID.fullmatch(p) for p in pids):
            return False  # nothing but pids goes into the expression below
        quoted = ",".join(f'"{p}"' for p in pids)
        why = reason.replace('"', "'")[:200]
        expr = (
            f'[rabbit_networking:close_connection(rabbit_misc:string_to_pid(P), "{why}") '
            f"|| P <- [{quoted}]], ok."
        )
        return self._rabbitmqctl("eval", expr, timeout=30.0)

    def _drop_guest(self) -> None:
        # RabbitMQ seeds `guest` (an administrator) on a fresh node: an account nobody had to
        # steal. A secure node has no use for it.
        if not self._rabbitmqctl("delete_user", "guest", timeout=30.0):
            log.debug("guest was already gone from %s", self._spec.name)

    def _limit_vhost(self, setup: SecureSetup) -> None:
        limits = {"max-connections": setup.max_connections, "max-queues": setup.max_queues}
        wanted = {k: v for k, v in limits.items() if v > 0}
        if wanted and not self._rabbitmqctl(
            "set_vhost_limits", "-p", setup.vhost, json.dumps(wanted), timeout=30.0
        ):
            raise BrokerError(
                f"could not set the limits of vhost {setup.vhost} on {self._spec.name}"
            )

    def _start_failure(self, what: str) -> BrokerError:
        s = self._spec
        node_log = s.base_dir / "log" / f"{s.name}.log"
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            lines = ["(console log unreadable)"]
        tail = "\n".join("    " + line[:300] for line in lines)
        return BrokerError(
            f"could not start private RabbitMQ node {s.name} on {_HOST}:{s.port} "
            f"(data in {s.base_dir}): {what}. Console log: {self.console_log}; "
            f"node log: {node_log}. Last console lines:\n{tail}",
            node=s.name,
            port=s.port,
            log=str(self.console_log),
        )

    def stop(self, timeout: float = 30.0) -> None:
        proc = self._proc
        if proc is None:
            return
        start = time.monotonic()
        deadline = start + timeout
        if proc.poll() is None:
            family = _descendants(proc.pid)
            # If rabbitmqctl fails or hangs, the signals in _terminate still bring the node down.
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, BrokerError):
                if self._rabbitmqctl("stop", timeout=max(1.0, timeout * 0.4)):
                    _wait_exit(proc, start + timeout * 0.6)
            self._terminate(proc, deadline)
            for p in family:  # erl_child_setup and friends live in sessions of their own
                _kill_quietly(p)
        self._proc = None
        s = self._spec
        while tcp_answers(_HOST, s.port, 0.2):
            if time.monotonic() >= deadline:
                msg = f"node {s.name} is gone but {_HOST}:{s.port} still answers after {timeout:g}s"
                raise BrokerError(msg, node=s.name, port=s.port)
            time.sleep(_POLL)

    def _rabbitmqctl(self, *args: str, timeout: float) -> bool:
        # Same env as the node: HOME selects its cookie, and -n keeps us off the shared node.
        cmd = [_tool("rabbitmqctl"), "-n", self._spec.name, *args]
        with self.console_log.open("ab") as log:
            done = subprocess.run(
                cmd,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        return done.returncode == 0

    def _terminate(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        family = _descendants(proc.pid) if proc.poll() is None else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # Only while unreaped: afterwards the group id could belong to someone else.
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            now = time.monotonic()
            _wait_exit(proc, max(deadline - 2.0, now + 1.0) if sig == signal.SIGTERM else now + 5.0)
        if proc.poll() is None:
            raise BrokerError(f"RabbitMQ node {self._spec.name} (pid {proc.pid}) survived SIGKILL")
        for p in family:
            _kill_quietly(p)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_quietly(p: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        p.kill()  # psutil refuses if the pid now belongs to a different process


def _wait_exit(proc: subprocess.Popen[bytes], until: float) -> None:
    while proc.poll() is None and time.monotonic() < until:
        time.sleep(_POLL)
