"""SpawnManager: the daemon's lifecycle owner. It admits spawns, tracks every VSM through its
states, terminates subtrees leaves first and reports exits the moment the fork server sees them.

All methods run on the daemon's loop thread; results are ``concurrent.futures.Future`` objects
that the loop resolves, so callers on other threads may block on them.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from vsmd.agents import AgentRegistry
from vsmd.config import Config, check_name
from vsmd.errors import (
    ConfigError,
    Conflict,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    ShuttingDown,
    SpawnError,
    VsmdError,
)
from vsmd.protocol import SpawnConfig, VsmInfo
from vsmd.registry import Registry, Status, VsmRecord
from vsmd.runtime import EXIT_REASONS
from vsmd.spec import VsmSpec
from vsmd.supervisor.oscalls import exit_text
from vsmd.timers import Timers

log = logging.getLogger("vsmd.spawn")


class ProcessPool(Protocol):
    """What the manager needs from the process layer (the fork server handle)."""

    def spawn(self, spec: VsmSpec) -> None: ...

    def kill(self, pid: int, sig: int) -> None: ...


class SpawnManager:
    def __init__(
        self,
        config: Config,
        pool: ProcessPool,
        timers: Timers,
        agents: AgentRegistry,
        on_removed: Callable[[VsmRecord], None] = lambda _rec: None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.timers = timers
        self.agents = agents
        self.registry = Registry()
        self._on_removed = on_removed
        self._spawn_waiters: dict[str, list[Future[VsmInfo]]] = {}
        self._stop_waiters: dict[str, list[Future[list[str]]]] = {}
        self._stop_timeout: dict[str, float] = {}
        self.shutting_down = False

    # --- the API ---------------------------------------------------------------------------

    def spawn_recursive_vsm(self, parent_id: str | None, config: SpawnConfig) -> Future[VsmInfo]:
        fut: Future[VsmInfo] = Future()
        try:
            rec = self._admit(parent_id, config)
        except VsmdError as err:
            fut.set_exception(err)
            return fut
        self.registry.add(rec)
        self._spawn_waiters[rec.id] = [fut]
        self._start(rec)
        return fut

    def terminate_child_vsm(self, vsm_id: str, timeout: float | None = None) -> Future[list[str]]:
        """Stop the VSM and its whole subtree, leaves first; resolves to the removed ids."""
        fut: Future[list[str]] = Future()
        try:
            rec = self.registry.get(vsm_id)
        except NotFound as err:
            fut.set_exception(err)
            return fut
        self._stop_waiters.setdefault(rec.id, []).append(fut)
        grace = self.config.stop_timeout if timeout is None else timeout
        for node in self.registry.subtree(rec.id):
            self._stop_timeout[node.id] = grace
            if node.status in (Status.STARTING, Status.RUNNING, Status.EXITED, Status.FAILED):
                node.set_status(Status.STOPPING)
        self._advance(rec.id)
        return fut

    def list_child_vsms(
        self, parent_id: str | None = None, recursive: bool = True
    ) -> list[VsmInfo]:
        if recursive:
            return [r.info() for r in self.registry.descendants(parent_id)]
        if parent_id is None:
            return [r.info() for r in self.registry.roots()]
        return [self.registry.get(c).info() for c in self.registry.get(parent_id).children]

    def show(self, vsm_id: str) -> VsmInfo:
        return self.registry.get(vsm_id).info()

    def shutdown(self, timeout: float | None = None) -> list[Future[list[str]]]:
        """Refuse new spawns and stop every tree."""
        self.shutting_down = True
        return [self.terminate_child_vsm(r.id, timeout) for r in self.registry.roots()]

    # --- admission -------------------------------------------------------------------------

    def _admit(self, parent_id: str | None, config: SpawnConfig) -> VsmRecord:
        if self.shutting_down:
            raise ShuttingDown("vsmd is shutting down; no new VSMs")
        parent = self.registry.get(parent_id) if parent_id is not None else None
        if parent is not None and parent.status is not Status.RUNNING:
            raise Conflict(f"parent {parent.id} is {parent.status}, not running")
        depth = 1 if parent is None else parent.depth + 1
        if depth > self.config.max_depth:
            raise QuotaExceeded(
                f"depth {depth} is over max_depth {self.config.max_depth}",
                limit="max_depth",
                value=depth,
                max=self.config.max_depth,
            )
        live = self.registry.live_count()
        if live >= self.config.max_total:
            raise QuotaExceeded(
                f"{live} VSMs are running; max_total is {self.config.max_total}",
                limit="max_total",
                value=live,
                max=self.config.max_total,
            )
        if parent is not None and len(parent.children) >= self.config.max_children:
            raise QuotaExceeded(
                f"{parent.id} has {len(parent.children)} children; max_children is "
                f"{self.config.max_children}",
                limit="max_children",
                value=len(parent.children),
                max=self.config.max_children,
            )
        agent = config.agent or self.config.default_agent
        if agent not in self.agents:
            raise NotFound(
                f"unknown agent type {agent[:64]!r}; known: {', '.join(self.agents.names())}"
            )
        vsm_id = uuid.uuid4().hex[:12]
        try:
            name = check_name(config.name, "VSM name") if config.name else vsm_id
        except ConfigError as err:
            raise ProtocolError(err.message, field="name") from None
        if self.registry.sibling_named(parent_id, name) is not None:
            raise Conflict(
                f"a VSM named {name!r} already exists under {parent_id or 'the top level'}"
            )
        path = name if parent is None else f"{parent.path}.{name}"
        return VsmRecord(
            id=vsm_id,
            name=name,
            parent=parent_id,
            path=path,
            depth=depth,
            agent=agent,
            config=dict(config.settings),
        )

    def _start(self, rec: VsmRecord) -> None:
        spec = VsmSpec(
            vsm_id=rec.id,
            name=rec.name,
            path=rec.path,
            parent_id=rec.parent,
            depth=rec.depth,
            agent=rec.agent,
            broker_url=self.config.broker_url,
            namespace=self.config.namespace,
            config=rec.config,
            heartbeat=self.config.heartbeat,
            max_message_bytes=self.config.max_message_bytes,
            agent_modules=self.config.agent_modules,
        )
        rec.forking, rec.term_sent = True, False
        rec.timer = self.timers.call_later(
            self.config.spawn_timeout, lambda: self._start_timeout(rec.id)
        )
        self.pool.spawn(spec)

    # --- events from the fork server and the bus ------------------------------------------

    def on_spawned(self, vsm_id: str, pid: int) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None:
            return
        rec.pid, rec.forking = pid, False
        if rec.status is Status.STOPPING:
            self._advance_all()

    def on_spawn_failed(self, vsm_id: str, error: str) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None:
            return
        rec.forking = False
        if rec.status is Status.STARTING:
            self._fail_start(rec, SpawnError(f"cannot start VSM {rec.path}: {error}"))
        else:
            self._advance_all()

    def on_ready(self, vsm_id: str, pid: int) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None or rec.status is not Status.STARTING:
            return
        rec.pid = rec.pid or pid
        rec.set_status(Status.RUNNING)
        rec.started_at = time.time()
        if rec.timer:
            rec.timer.cancel()
        for fut in self._spawn_waiters.pop(rec.id, []):
            fut.set_result(rec.info())

    def on_exited(self, vsm_id: str, pid: int, code: int | None, sig: int | None) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None or (rec.pid is not None and rec.pid != pid):
            return
        rec.pid, rec.exit_code, rec.exit_signal = None, code, sig
        rec.last_exit = exit_text(code, sig)
        if rec.timer:
            rec.timer.cancel()
        if rec.status is Status.STARTING:
            reason = EXIT_REASONS.get(code or 0, rec.last_exit)
            self._fail_start(
                rec, SpawnError(f"VSM {rec.path} exited during start: {reason}", exit=rec.last_exit)
            )
        elif rec.status is Status.STOPPING:
            rec.set_status(Status.EXITED)
            self._advance_all()
        else:
            rec.set_status(Status.EXITED if code == 0 else Status.FAILED)
            rec.last_reason = f"exited on its own ({rec.last_exit})"
            log.warning("VSM %s (%s) %s", rec.path, rec.id, rec.last_reason)

    # --- internals -------------------------------------------------------------------------

    def _fail_start(self, rec: VsmRecord, err: VsmdError) -> None:
        log.warning("%s", err.message)
        if rec.pid is not None:
            self.pool.kill(rec.pid, signal.SIGKILL)
        self.registry.remove(rec.id)
        self._on_removed(rec)
        for fut in self._spawn_waiters.pop(rec.id, []):
            fut.set_exception(err)

    def _start_timeout(self, vsm_id: str) -> None:
        rec = self.registry.find(vsm_id)
        if rec is not None and rec.status is Status.STARTING:
            self._fail_start(
                rec,
                SpawnError(
                    f"VSM {rec.path} did not report ready within {self.config.spawn_timeout:g} s"
                ),
            )

    def _advance_all(self) -> None:
        for root_id in list(self._stop_waiters):
            if root_id in self.registry:
                self._advance(root_id)

    def _advance(self, root_id: str) -> None:
        """Signal every stopping VSM whose children are all gone; finish when none is left."""
        nodes = self.registry.subtree(root_id)
        for node in nodes:
            self._signal_if_ready(node)
        if not any(node.has_process for node in nodes):
            self._finish(nodes)

    def _signal_if_ready(self, node: VsmRecord) -> None:
        if node.status is not Status.STOPPING or node.pid is None or node.term_sent:
            return
        if any(self.registry.get(c).has_process for c in node.children):
            return  # leaves first: a parent outlives its children
        node.term_sent = True
        self.pool.kill(node.pid, signal.SIGTERM)
        grace = self._stop_timeout.get(node.id, self.config.stop_timeout)
        node.timer = self.timers.call_later(grace, lambda: self._kill_now(node.id))

    def _kill_now(self, vsm_id: str) -> None:
        rec = self.registry.find(vsm_id)
        if rec is not None and rec.pid is not None:
            log.warning("VSM %s did not stop in time; killing it", rec.path)
            self.pool.kill(rec.pid, signal.SIGKILL)

    def _finish(self, nodes: list[VsmRecord]) -> None:
        removed: list[str] = []
        for node in nodes:  # leaves first
            self.registry.remove(node.id)
            self._stop_timeout.pop(node.id, None)
            self._on_removed(node)
            removed.append(node.id)
            for spawn_fut in self._spawn_waiters.pop(node.id, []):
                spawn_fut.set_exception(
                    SpawnError(f"VSM {node.path} was terminated while starting")
                )
            # Also answers a terminate of a descendant that was still in flight.
            for stop_fut in self._stop_waiters.pop(node.id, []):
                stop_fut.set_result(list(removed))
        self._advance_all()
