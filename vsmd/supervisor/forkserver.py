"""The fork server (zygote): a single-threaded process that imports the VSM runtime once and
forks VSMs on request, so a spawn costs a fork instead of a fresh interpreter; when it is
idle, it forks one child ahead of the next spawn (the standby, standby.py).

It is the OS parent of every VSM: it reaps them and reports ``(pid, status)`` to the daemon over
a SOCK_SEQPACKET socket (one orjson message per packet). It dies with the daemon (death signal,
and EOF on the socket), killing every VSM's process group on its way out (an agent's own
subprocesses included), and a VSM dies with it (death signal), so nothing outlives vsmd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import logging
import os
import select
import signal
import socket
import sys
from typing import Any, NoReturn

import orjson
from setproctitle import setproctitle

from vsmd.agents import AgentRegistry, build_registry
from vsmd.mcp.server import build_server
from vsmd.spec import MAX_PACKET, VsmSpec
from vsmd.supervisor import holes, hugepages, standby
from vsmd.supervisor.cgroups import join_cgroups, sweep
from vsmd.supervisor.oscalls import (
    OsCalls,
    RealOs,
    become_subreaper,
    describe_status,
    die_with_parent,
    drop_to,
    hide_memory,
    merge_pages,
)
from vsmd.supervisor.rlimits import apply_rlimits
from vsmd.supervisor.standby import Settings, Standby
from vsmd.vsm import loop as vsm_loop
from vsmd.vsm.bus import preconnect
from vsmd.vsm.credentials import amqp_url
from vsmd.vsm.prewarm import prewarm
from vsmd.vsm.runtime import run_vsm, run_vsm_here

log = logging.getLogger("vsmd.forkserver")
EXIT_CHILD_SETUP = 70
# Our death signal when the daemon dies. Catchable, unlike SIGKILL, so that we kill every VSM's
# process group (an agent's helpers too) before we go; a VSM's own death signal reaches the VSM
# only. Not SIGTERM or SIGINT: a terminal sends those to the daemon's whole group, us included.
DEATH_SIGNAL = signal.SIGUSR1
DEATH_GRACE = 5  # seconds to sweep the groups; then SIGALRM ends us as SIGKILL would have


class ForkServer:
    def __init__(
        self, sock: socket.socket, registry: AgentRegistry, oscalls: OsCalls | None = None
    ) -> None:
        self.sock = sock
        self.registry = registry
        self.os: OsCalls = oscalls or RealOs()
        self.children: dict[int, str] = {}  # pid -> vsm id, until reaped
        self.pid = os.getpid()  # what a VSM must see as its parent, checked after fork
        self._wake_r, self._wake_w = os.pipe()
        self.freeze = True
        self.warm = False
        # Objects that fill the allocator's holes (vsmd.supervisor.holes), kept for our life.
        self.fillers: list[list[object]] = []
        self.merging = False  # pages marked for the kernel's KSM (memory_merge)
        self.orphaned = False  # the daemon died: set by the death signal's handler
        self.cgroups: dict[int, tuple[str, ...]] = {}  # pid -> the cgroups it joined
        # One MCP server for every VSM forked here, built before any fork: shared pages.
        self.mcp_server = build_server()
        # The child forked ahead of the next spawn (standby.py), and the settings the last
        # spawn that wanted one asked for: None while no standby is wanted.
        self.standby: Standby | None = None
        self.standby_for: Settings | None = None

    def send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(orjson.dumps(msg))

    # --- requests from the daemon ----------------------------------------------------------

    def handle(self, msg: dict[str, Any]) -> bool:
        """Act on one request; False when the daemon asked us to leave."""
        op = msg.get("op")
        if op == "spawn":
            self.spawn(msg)
        elif op == "kill":
            self.kill(int(msg["pid"]), int(msg["sig"]))
        elif op == "shutdown":
            return False
        return True

    def spawn(self, msg: dict[str, Any]) -> None:
        spec = VsmSpec.from_dict(msg["spec"])
        strategy = msg.get("strategy", "forkserver")
        self._prepare(msg, spec, strategy)
        freeze = self.freeze and bool(msg.get("gc_freeze", True))
        # Connected ahead with the daemon's credentials only: in secure mode a VSM connects
        # with a token of its own, which a standby cannot have before it is that VSM.
        url = None if spec.token_socket else amqp_url(spec)
        settings = Settings(freeze, self.merging, url, spec.event_loop)
        forked_here = strategy == "forkserver"
        self.standby_for = settings if forked_here and msg.get("standby", False) else None
        if self.standby is not None:
            if forked_here and self.standby.settings == settings and self._hand_over(spec):
                return
            self.drop_standby()
        if freeze:
            # Move everything imported so far out of the collector's reach so the child's
            # first collection does not write to (and un-share) every page.
            gc.freeze()
        try:
            # The VSM's stdout and stderr: the daemon reads the other end and logs each line
            # with the VSM's id and path.
            out_r, out_w = os.pipe()
        except OSError as exc:
            self._spawn_failed(spec, f"no pipe for its output: {os.strerror(exc.errno or 0)}")
            return
        try:
            pid = self.os.fork()
        except OSError as exc:
            os.close(out_r)
            os.close(out_w)
            self._spawn_failed(spec, f"fork failed: {os.strerror(exc.errno or errno.EAGAIN)}")
            return
        if pid == 0:
            os.close(out_r)
            self._child(spec, strategy, out_w)
        os.close(out_w)
        self._spawned(spec, pid, out_r)

    def _prepare(self, msg: dict[str, Any], spec: VsmSpec, strategy: str) -> None:
        """Once, on the first spawn that asks: page merging, and the warm-up."""
        if not self.merging and msg.get("memory_merge", False):
            self.merging = True  # once; every VSM forked from now on inherits the mark
            try:
                merge_pages()
            except OSError as exc:
                log.warning("memory_merge: the kernel refused page merging: %s", exc.strerror)
        if not self.warm and strategy == "forkserver" and msg.get("prewarm", True):
            self.warm = True  # once, on the first spawn: the first to bring a broker URL
            prewarm(spec, self.registry, self.mcp_server)
            gc.collect()  # the warm-up's garbage first: its holes are filled with the rest
            self.fillers = holes.fill()
            # Not with KSM, which would split the huge pages again.
            if not self.merging and msg.get("huge_pages", False):
                huge = hugepages.collapse()
                log.info("%d MiB of the fork server's heap on huge pages", huge >> 20)

    def _spawned(self, spec: VsmSpec, pid: int, out_r: int) -> None:
        self.children[pid] = spec.vsm_id
        if spec.cgroup_procs:
            self.cgroups[pid] = spec.cgroup_procs
        report = {"ev": "spawned", "vsm_id": spec.vsm_id, "pid": pid, "path": spec.path}
        with contextlib.suppress(OSError):
            socket.send_fds(self.sock, [orjson.dumps(report)], [out_r])
        os.close(out_r)  # the daemon holds its own copy now

    # --- the standby -----------------------------------------------------------------------

    def _hand_over(self, spec: VsmSpec) -> bool:
        """The standby becomes the VSM of ``spec``; False when it could not take it."""
        sb = self.standby
        assert sb is not None
        if not sb.hand_over(orjson.dumps(spec.to_dict())):
            return False
        self.standby = None
        out_r, sb.out_r = sb.out_r, -1
        self._spawned(spec, sb.pid, out_r)
        return True

    def drop_standby(self, reaped: bool = False) -> None:
        """Give the standby up: killed unless ``reaped`` already (its pid may be another
        process's by then), and reaped as an orphan. (Were it left alive, it would read an
        empty spec and exit.)"""
        sb, self.standby = self.standby, None
        if sb is None:
            return
        sb.close()
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                self.os.kill(sb.pid, signal.SIGKILL)

    @property
    def standby_due(self) -> bool:
        return self.standby is None and self.standby_for is not None and not self.orphaned

    def refill(self) -> None:
        """Fork a standby for the next spawn; the loop calls this when no request waits."""
        settings = self.standby_for
        if not self.standby_due or settings is None:
            return
        if settings.gc_freeze:
            gc.freeze()
        fds: list[int] = []
        try:
            fds += os.pipe()
            fds += os.pipe()
            pid = self.os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            log.warning("no standby forked: %s", os.strerror(exc.errno or 0))
            self.standby_for = None  # not again until the next spawn asks for one
            return
        spec_r, spec_w, out_r, out_w = fds
        if pid == 0:
            os.close(spec_w)
            os.close(out_r)
            self._child(None, "forkserver", out_w, spec_r, settings)
        os.close(spec_r)
        os.close(out_w)
        self.standby = Standby(pid, spec_w, out_r, settings)

    def _spawn_failed(self, spec: VsmSpec, error: str) -> None:
        self.send({"ev": "spawn_failed", "vsm_id": spec.vsm_id, "error": error})

    def kill(self, pid: int, sig: int) -> None:
        # Only processes we have not reaped yet: their pids cannot have been reused.
        if pid not in self.children:
            return
        try:
            self.os.killpg(pid, sig)
        except ProcessLookupError:
            # Between fork and setsid the child has no group of its own yet.
            with contextlib.suppress(ProcessLookupError):
                self.os.kill(pid, sig)

    def reap(self) -> None:
        while True:
            try:
                pid, status = self.os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            vsm_id = self.children.pop(pid, None)
            self.cgroups.pop(pid, None)  # the daemon empties and removes it from here on
            if self.standby is not None and pid == self.standby.pid:
                self.drop_standby(reaped=True)  # died unused: the loop forks another
            if vsm_id is None:
                continue  # an agent's orphaned subprocess, re-parented to us: reaped, done
            code, sig = describe_status(status)
            # Whatever the VSM left in its group (an agent's helpers) goes with it. The group id
            # cannot have been reused: Linux gives out no pid that still names a group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.os.killpg(pid, signal.SIGKILL)
            self.send({"ev": "exited", "vsm_id": vsm_id, "pid": pid, "code": code, "signal": sig})

    def kill_all(self) -> None:
        self.standby_for = None
        self.drop_standby()
        for pid in list(self.children):
            self.kill(pid, signal.SIGKILL)

    # --- the child side of fork ------------------------------------------------------------

    def _child(
        self,
        spec: VsmSpec | None,
        strategy: str,
        out: int,
        spec_r: int = -1,
        settings: Settings | None = None,
    ) -> NoReturn:
        """The child's side: ``spec`` None for a standby, which reads it from ``spec_r``."""
        code = EXIT_CHILD_SETUP
        name = spec.vsm_id if spec is not None else "standby"
        try:
            self._detach(out)
            if spec is not None:
                code = self._become(spec, strategy)
            else:
                assert settings is not None
                setproctitle(standby.TITLE)
                code = vsm_loop.run(self._standby(spec_r, settings), settings.loop)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                print(f"vsm {name}: start failed: {exc!r}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)

    def _detach(self, out: int) -> None:
        """What every child does first, whoever it will be."""
        _redirect_output(out)  # first: whatever goes wrong below is logged as this VSM's
        os.setsid()  # own session and process group: a terminate kills the agent's helpers too
        die_with_parent(signal.SIGKILL, self.pid)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, DEATH_SIGNAL):
            signal.signal(sig, signal.SIG_DFL)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    async def _standby(self, spec_r: int, settings: Settings) -> int:
        """A standby's life, on the loop the VSM will run on: connect ahead (not in secure
        mode), wait for the spec, then become that VSM with the connection."""
        made = await preconnect(settings.url) if settings.url else None
        raw = await standby.receive_here(spec_r)
        if not raw:  # given up on
            if made is not None:
                await made.close()
            return 0
        spec = VsmSpec.from_dict(orjson.loads(raw))
        self._limit(spec)
        gc.enable()
        return await run_vsm_here(spec, self.registry, self.mcp_server, made)

    def _limit(self, spec: VsmSpec) -> None:
        """Hard quotas and identity before any agent code, inherited by exec and every process
        the agent starts."""
        join_cgroups(spec.cgroup_procs)
        apply_rlimits(spec.policy)
        if spec.uid:
            drop_to(spec.uid, self.pid)  # its own uid: no other VSM's files, signals, memory
        elif spec.token_socket:
            hide_memory()  # same uid as its siblings: at least keep its token to itself

    def _become(self, spec: VsmSpec, strategy: str) -> int:
        """The VSM of ``spec``: its limits and identity, then its run."""
        self._limit(spec)
        if strategy == "exec":
            # The state stays off argv (ps shows argv): the VSM asks the daemon for it.
            spec = dataclasses.replace(spec, state={}, sync=True)
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "vsmd.vsm.runtime",
                    orjson.dumps(spec.to_dict()).decode(),
                ],
            )
        gc.enable()
        return run_vsm(spec, self.registry, self.mcp_server)

    # --- main loop -------------------------------------------------------------------------

    def serve(self) -> None:
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        # A Python-level handler (not SIG_IGN) so the wakeup fd gets the signal and waitpid works.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the daemon decides when we go
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl-c reaches the daemon, which stops us
        signal.signal(DEATH_SIGNAL, self._on_daemon_death)
        self.send({"ev": "hello", "pid": os.getpid()})
        try:
            self._loop()
        finally:
            left = [path for files in self.cgroups.values() for path in files]
            self.kill_all()
            if self.orphaned:  # nobody else is left to clean the VSMs' cgroups up
                sweep(left)
            self.reap()

    def _on_daemon_death(self, _signum: int, _frame: object) -> None:
        self.orphaned = True  # the loop leaves, and serve() kills every VSM's group
        signal.alarm(DEATH_GRACE)  # a loop that cannot get there must not outlive the daemon

    def _loop(self) -> None:
        while not self.orphaned:
            # A standby is forked only when no request waits: never ahead of a spawn's fork.
            wait = 0.0 if self.standby_due else None
            readable, _, _ = select.select([self.sock.fileno(), self._wake_r], [], [], wait)
            if self.orphaned:
                return
            if not readable:
                self.refill()
                continue
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                self.reap()
            if self.sock.fileno() in readable:
                raw = self.sock.recv(MAX_PACKET)
                if not raw:
                    self.orphaned = True
                    return  # the daemon is gone: our lifeline
                if not self.handle(orjson.loads(raw)):
                    return
            self.reap()


def _redirect_output(fd: int) -> None:
    """Make ``fd`` this process's stdout and stderr, line-buffered: a pipe would otherwise
    hold an agent's prints back until a buffer fills."""
    for std in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            std.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for std in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            std.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def main() -> None:
    """``python -m vsmd.supervisor.forkserver FD DAEMON_PID [AGENT_MODULE ...]``"""
    fd, daemon_pid = int(sys.argv[1]), int(sys.argv[2])
    # The daemon's pid comes from the daemon: by the time this runs (after every import) it
    # may be gone, and os.getppid() would then name our new parent instead.
    die_with_parent(DEATH_SIGNAL, daemon_pid)
    become_subreaper()
    # No time: the daemon reads this (and what its VSMs inherit) and logs it with its own.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we report in our own words
    sock = socket.socket(fileno=fd)
    registry = build_registry(sys.argv[3:])
    gc.collect()
    ForkServer(sock, registry).serve()


if __name__ == "__main__":
    main()
