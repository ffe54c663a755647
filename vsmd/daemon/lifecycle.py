"""What happens to VSMs after they start: exits, restarts with backoff, escalation, stops.

The base of :class:`vsmd.daemon.spawn_manager.SpawnManager`; everything runs on the daemon's
loop thread.
"""

from __future__ import annotations

import abc
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from vsmd.config import Config
from vsmd.daemon.cgroups import Cgroups
from vsmd.daemon.events import EventLog
from vsmd.daemon.journal import Journal
from vsmd.daemon.policy import should_restart
from vsmd.daemon.quotas import Violation
from vsmd.daemon.registry import Registry, Status, VsmRecord
from vsmd.daemon.timers import Timers
from vsmd.errors import SpawnError, VsmdError
from vsmd.protocol import VsmInfo
from vsmd.spec import EXIT_REASONS, VsmSpec
from vsmd.supervisor.oscalls import exit_text

log = logging.getLogger("vsmd.daemon.lifecycle")


class ProcessPool(Protocol):
    """What the manager needs from the process layer (the fork server handle)."""

    def spawn(self, spec: VsmSpec) -> None: ...

    def kill(self, pid: int, sig: int) -> None: ...


Notify = Callable[[VsmRecord, str, dict[str, Any]], None]


class Lifecycle(abc.ABC):
    def __init__(
        self,
        config: Config,
        pool: ProcessPool,
        timers: Timers,
        on_removed: Callable[[VsmRecord], None],
        events: EventLog | None,
        journal: Journal | None,
        notify: Notify | None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.timers = timers
        self.registry = Registry()
        self.events = events or EventLog(config.event_buffer)
        self.journal = journal
        self._on_removed = on_removed
        self._notify = notify or (lambda _rec, _kind, _body: None)
        self._spawn_waiters: dict[str, list[Future[VsmInfo]]] = {}
        self._stop_waiters: dict[str, list[Future[list[str]]]] = {}
        self._stop_timeout: dict[str, float] = {}
        # The subtree (leaves first) each pending terminate was asked to stop, for its answer.
        self._stop_members: dict[str, list[str]] = {}
        # Kernel-enforced limits per VSM where the host has them; the daemon plugs them in.
        self.cgroups: Cgroups | None = None

    @abc.abstractmethod
    def _start(self, rec: VsmRecord) -> None:
        """Ask the pool for the VSM's process (admission is the subclass's business)."""

    def effective(self, rec: VsmRecord, name: str) -> Any:
        value = getattr(rec.policy, name)
        return value if value is not None else getattr(self.config, f"default_{name}", None)

    # --- exits -----------------------------------------------------------------------------

    def on_exited(self, vsm_id: str, pid: int, code: int | None, sig: int | None) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None or (rec.pid is not None and rec.pid != pid):
            return  # an earlier incarnation, already accounted for
        if self.cgroups is not None:
            self.cgroups.empty(rec.id)  # nothing the agent started outlives the VSM
            self.note_oom(rec, exited=True)
        rec.pid, rec.exit_code, rec.exit_signal = None, code, sig
        rec.last_exit = exit_text(code, sig)
        rec.metrics = {}
        rec.rates = {}
        if rec.timer:
            rec.timer.cancel()
        if rec.status is Status.STOPPING:
            # A commanded stop never counts as a crash, however the process ended.
            rec.set_status(Status.EXITED)
            self._advance_from(rec.id)
        elif rec.status is Status.STARTING and not rec.ever_ready:
            reason = EXIT_REASONS.get(code or 0, rec.last_exit)
            self._fail_start(
                rec, SpawnError(f"VSM {rec.path} exited during start: {reason}", exit=rec.last_exit)
            )
        else:
            self._crashed(rec, code, sig)

    def _crashed(self, rec: VsmRecord, code: int | None, sig: int | None) -> None:
        uptime = time.monotonic() - rec.ready_at if rec.ready_at is not None else None
        rec.ready_at = None
        why = f"exited on its own ({rec.last_exit})"
        if rec.reported:
            why += f": {rec.reported}"
        if rec.force_restart and rec.last_reason:
            why = rec.last_reason  # the quota or supervisor that asked for it
        rec.reported = None
        restart = rec.force_restart or should_restart(self.effective(rec, "restart"), code, sig)
        rec.force_restart = False
        if not restart:
            rec.set_status(Status.EXITED if code == 0 and sig is None else Status.FAILED)
            rec.last_reason = why
            self.events.emit(
                "exited",
                f"{rec.path} {why}; its restart policy keeps it down",
                rec.id,
                rec.path,
                exit=rec.last_exit,
            )
            self._tell_parent_it_stays_down(rec)
            return
        delay = rec.history.record(time.monotonic(), uptime, self.config)
        if delay is None:
            rec.set_status(Status.FAILED)
            rec.next_restart = None
            rec.last_reason = (
                f"restart intensity exceeded: more than {self.config.max_restarts} "
                f"restarts in {self.config.max_seconds:g} s; last: {why}"
            )
            self.events.emit(
                "failed",
                f"{rec.path}: {rec.last_reason}",
                rec.id,
                rec.path,
                level=logging.WARNING,
                exit=rec.last_exit,
            )
            self._escalate(rec)
            return
        self._schedule_restart(rec, delay, why)

    def _tell_parent_it_stays_down(self, rec: VsmRecord) -> None:
        """Its parent's agent counts on its children: one gone for good must not look, from
        there, like one that still runs (as _escalate does for a failure)."""
        parent = self.registry.find(rec.parent) if rec.parent else None
        if parent is not None:
            self._notify(
                parent,
                "child_exited",
                {
                    "child": rec.id,
                    "path": rec.path,
                    "exit": rec.last_exit,
                    "reason": rec.last_reason,
                },
            )

    def _schedule_restart(self, rec: VsmRecord, delay: float, why: str) -> None:
        rec.set_status(Status.BACKOFF)
        rec.last_reason = why
        rec.next_restart = time.time() + delay
        rec.timer = self.timers.call_later(delay, lambda: self._restart(rec.id))
        self.events.emit(
            "restart_scheduled",
            f"{rec.path} {why}; restarting in {delay:.2f} s",
            rec.id,
            rec.path,
            delay=round(delay, 3),
            exit=rec.last_exit,
        )

    def _restart(self, vsm_id: str) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None or rec.status is not Status.BACKOFF:
            return  # terminated while waiting: no restart afterwards
        rec.set_status(Status.STARTING)
        rec.next_restart = None
        rec.restarts += 1
        self._start(rec)

    def _escalate(self, rec: VsmRecord) -> None:
        """Tell the parent (its inbox and the event stream) and apply its on_child_failure."""
        parent = self.registry.find(rec.parent) if rec.parent else None
        where = parent.path if parent else "the daemon"
        self.events.emit(
            "escalated",
            f"failure of {rec.path} escalated to {where}",
            rec.id,
            rec.path,
            parent=parent.id if parent else None,
        )
        if parent is None:
            return
        self._notify(
            parent, "child_failed", {"child": rec.id, "path": rec.path, "reason": rec.last_reason}
        )
        rule = self.effective(parent, "on_child_failure")
        if rule == "terminate":
            self.events.emit(
                "escalated",
                f"{parent.path} stops its subtree (on_child_failure)",
                parent.id,
                parent.path,
            )
            self.terminate_child_vsm(parent.id)
        elif rule == "restart":
            # The parent's own restart (its process is killed below) counts towards its own
            # intensity, so a child that always fails ends up failing its parent, not looping.
            self.events.emit(
                "escalated",
                f"{parent.path} restarts its subtree (on_child_failure)",
                parent.id,
                parent.path,
            )
            self._restart_subtree(parent.id)

    def _restart_subtree(self, root_id: str) -> None:
        for node in self.registry.subtree(root_id):
            if node.status is Status.FAILED:
                node.history.clear()  # given up on before; it gets a fresh window
            node.last_reason = f"restarted with the subtree of {self.registry.get(root_id).path}"
            if node.pid is not None and node.status is Status.RUNNING:
                node.force_restart = True
                self.pool.kill(node.pid, signal.SIGKILL)
            elif node.status in (Status.FAILED, Status.EXITED):
                self._schedule_restart(node, 0.0, node.last_reason)

    def on_violation(self, v: Violation) -> None:
        rec = self.registry.find(v.vsm_id)
        if rec is None or rec.status is not Status.RUNNING:
            return
        rec.last_reason = v.message
        self.events.emit(
            f"quota_{v.action}",
            f"{rec.path}: {v.message}",
            rec.id,
            rec.path,
            level=logging.WARNING,
            metric=v.metric,
            action=v.action,
        )
        if v.action == "restart" and rec.pid is not None:
            rec.force_restart = True
            self.pool.kill(rec.pid, signal.SIGTERM)
            rec.timer = self.timers.call_later(
                self.config.stop_timeout, lambda: self._kill_now(rec.id)
            )
        elif v.action == "terminate":
            self.terminate_child_vsm(rec.id)

    def note_oom(self, rec: VsmRecord, exited: bool = False) -> None:
        """Tell of processes the kernel's OOM killer took in the VSM's memory cgroup."""
        kills = self.cgroups.new_oom_kills(rec.id) if self.cgroups is not None else 0
        if not kills:
            return
        what = "process" if kills == 1 else "processes"
        message = f"out of memory: the kernel killed {kills} {what} in its memory cgroup"
        if exited:
            rec.reported = message  # the reason its exit is given
        else:
            rec.last_reason = message
        self.events.emit(
            "oom_kill",
            f"{rec.path}: {message}",
            rec.id,
            rec.path,
            level=logging.WARNING,
            count=kills,
        )

    def _fail_start(self, rec: VsmRecord, err: VsmdError) -> None:
        self.events.emit("spawn_failed", err.message, rec.id, rec.path, level=logging.WARNING)
        if rec.pid is not None:
            self.pool.kill(rec.pid, signal.SIGKILL)
        self._remove(rec)
        for fut in self._spawn_waiters.pop(rec.id, []):
            fut.set_exception(err)

    def _remove(self, rec: VsmRecord) -> None:
        self.registry.remove(rec.id)
        self._stop_timeout.pop(rec.id, None)
        if self.cgroups is not None:
            self.cgroups.remove(rec.id, self.registry)
        if self.journal is not None:
            self.journal.delete(rec.id)
        self._forget(rec)
        self._on_removed(rec)

    @abc.abstractmethod
    def _forget(self, rec: VsmRecord) -> None:
        """Drop per-VSM bookkeeping kept outside the registry (buckets, sampler state)."""

    # --- commanded stops -------------------------------------------------------------------

    @abc.abstractmethod
    def terminate_child_vsm(self, vsm_id: str, timeout: float | None = None) -> Future[list[str]]:
        """Stop a VSM and its subtree (escalation and quota actions use it too)."""

    def _advance_from(self, vsm_id: str | None) -> None:
        """Advance the nearest pending terminate at or above ``vsm_id``.

        Only that one can have changed: its finish moves on to the next one above. (Advancing
        every pending terminate on every exit made a stop of 1,000 VSMs quadratic.)
        """
        node = self.registry.find(vsm_id) if vsm_id is not None else None
        while node is not None:
            if node.id in self._stop_waiters:
                self._advance(node.id)
                return
            node = self.registry.find(node.parent) if node.parent is not None else None

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
            self.events.emit(
                "killed",
                f"{rec.path} did not stop in time; SIGKILL",
                rec.id,
                rec.path,
                level=logging.WARNING,
            )
            self.pool.kill(rec.pid, signal.SIGKILL)

    def _finish(self, nodes: list[VsmRecord]) -> None:
        above = nodes[-1].parent if nodes else None  # the root is last: leaves first
        removed: list[str] = []
        for node in nodes:  # leaves first
            self._remove(node)
            removed.append(node.id)
            for spawn_fut in self._spawn_waiters.pop(node.id, []):
                spawn_fut.set_exception(
                    SpawnError(f"VSM {node.path} was terminated while starting")
                )
            # Also answers a terminate of a descendant that was still in flight.
            members = self._stop_members.pop(node.id, [node.id])
            for stop_fut in self._stop_waiters.pop(node.id, []):
                stop_fut.set_result([i for i in members if i not in self.registry])
        if nodes:
            root = nodes[-1]
            self.events.emit(
                "terminated",
                f"{root.path} and its subtree stopped ({len(removed)} VSMs)",
                root.id,
                root.path,
                ids=removed,
            )
        self._advance_from(above)
