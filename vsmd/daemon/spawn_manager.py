"""SpawnManager: the daemon's lifecycle owner. It admits spawns (authority, limits, budgets,
throttles), keeps the registry and the journal, and hands exits, restarts and stops to
:class:`vsmd.daemon.lifecycle.Lifecycle`.

All methods run on the daemon's loop thread; results are ``concurrent.futures.Future`` objects
that the loop resolves, so callers on other threads may block on them.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from vsmd.agents import AgentRegistry
from vsmd.config import Config
from vsmd.daemon import policy_limits
from vsmd.daemon.admit import Gate
from vsmd.daemon.cgroups import leaf_limits, subtree_limits
from vsmd.daemon.events import EventLog
from vsmd.daemon.journal import Entry, Journal
from vsmd.daemon.lifecycle import Lifecycle, Notify, ProcessPool
from vsmd.daemon.metrics import SPAWN_BUCKETS, Histogram
from vsmd.daemon.quotas import Sample, Sampler
from vsmd.daemon.registry import Status, VsmRecord
from vsmd.daemon.steptimes import StepTimes
from vsmd.daemon.throttle import Admission
from vsmd.daemon.timers import Timers
from vsmd.errors import (
    JournalUnavailable,
    NotFound,
    ShuttingDown,
    SpawnError,
    VsmdError,
)
from vsmd.protocol import Policy, SpawnConfig, VsmInfo
from vsmd.spec import VsmSpec

__all__ = ["ProcessPool", "SpawnManager"]
log = logging.getLogger("vsmd.spawn")


class SpawnManager(Lifecycle):
    def __init__(
        self,
        config: Config,
        pool: ProcessPool,
        timers: Timers,
        agents: AgentRegistry,
        on_removed: Callable[[VsmRecord], None] = lambda _rec: None,
        events: EventLog | None = None,
        journal: Journal | None = None,
        admission: Admission | None = None,
        notify: Notify | None = None,
    ) -> None:
        super().__init__(config, pool, timers, on_removed, events, journal, notify)
        self.agents = agents
        self.admission = admission or Admission(config)
        self.gate = Gate(config, self.registry, agents, self.admission)
        self.sampler = Sampler(config.quota_violations)
        self.shutting_down = False
        # Secure mode: no credentials in the spec, where to get a token instead (daemon/trust.py).
        self.prepare_spec: Callable[[VsmSpec], VsmSpec] | None = None
        # For the metrics endpoint: fork request to ready report, and new VSMs that got there.
        self.spawn_ready = Histogram(SPAWN_BUCKETS)
        self.spawned = 0
        # For the metrics endpoint and ping: the loop's own time per step of a spawn.
        self.steps = StepTimes()

    # --- the API ---------------------------------------------------------------------------

    def spawn_recursive_vsm(self, parent_id: str | None, config: SpawnConfig) -> Future[VsmInfo]:
        fut: Future[VsmInfo] = Future()
        # Timed on the loop for the metrics (steptimes.py); the fork request times itself.
        began = self.steps.begin()
        try:
            rec = self._admit(parent_id, config)
        except VsmdError as err:
            self.steps.end("admission", began)
            if err.code in ("THROTTLED", "QUOTA_EXCEEDED"):
                parent = self.registry.find(parent_id) if parent_id else None
                self._step_event(
                    err.code.lower(),
                    err.message,
                    parent_id,
                    parent.path if parent else None,
                    **err.details,
                )
            fut.set_exception(err)
            return fut
        began = self.steps.end("admission", began)
        if self.journal is not None:
            try:  # before the registry: a VSM the journal cannot hold is not started at all
                self.journal.put(
                    Entry(
                        rec.id,
                        rec.parent,
                        rec.name,
                        rec.path,
                        rec.depth,
                        rec.agent,
                        rec.config,
                        rec.policy.to_dict(),
                    )
                )
            except JournalUnavailable as err:
                self.steps.end("journal", began)
                fut.set_exception(err)
                return fut
            self.steps.end("journal", began)
        self.registry.add(rec)
        self._spawn_waiters[rec.id] = [fut]
        self._start(rec)
        return fut

    def terminate_child_vsm(self, vsm_id: str, timeout: float | None = None) -> Future[list[str]]:
        """Stop the VSM and its whole subtree, leaves first; resolves to the removed ids.

        Children whose on_parent_exit is ``abandon`` are first re-parented to the nearest
        ancestor that lives on, and keep running.
        """
        fut: Future[list[str]] = Future()
        try:
            rec = self.registry.get(vsm_id)
        except NotFound as err:
            fut.set_exception(err)
            return fut
        if not self.shutting_down:
            self._abandon_children(rec)
        self._stop_waiters.setdefault(rec.id, []).append(fut)
        self._stop_members.setdefault(rec.id, [n.id for n in self.registry.subtree(rec.id)])
        grace = self.config.stop_timeout if timeout is None else timeout
        for node in self.registry.subtree(rec.id):
            self._stop_timeout[node.id] = grace
            if node.status is not Status.STOPPING:
                if node.timer:
                    node.timer.cancel()  # a pending restart must not fire after this
                node.next_restart = None
                node.set_status(Status.STOPPING)
        self._advance(rec.id)
        return fut

    def list_child_vsms(
        self, parent_id: str | None = None, recursive: bool = True
    ) -> list[VsmInfo]:
        return [r.info() for r in self._listed(parent_id, recursive)]

    def list_dicts(self, parent_id: str | None, recursive: bool) -> list[dict[str, Any]]:
        """``list_child_vsms`` as the dicts the admin reply carries, without the dataclasses."""
        return [r.info_dict() for r in self._listed(parent_id, recursive)]

    def _listed(self, parent_id: str | None, recursive: bool) -> list[VsmRecord]:
        if recursive:
            return self.registry.descendants(parent_id)
        if parent_id is None:
            return self.registry.roots()
        return [self.registry.get(c) for c in self.registry.get(parent_id).children]

    def show(self, vsm_id: str) -> VsmInfo:
        return self.registry.get(vsm_id).info()

    def shutdown(self, timeout: float | None = None) -> list[Future[list[str]]]:
        """Refuse new spawns and stop every tree; the journal keeps the desired tree."""
        self.shutting_down = True  # also: nobody is abandoned, everything stops
        self.journal = None  # a daemon shutdown is not a wish to forget the tree
        return [self.terminate_child_vsm(r.id, timeout) for r in self.registry.roots()]

    # --- admission -------------------------------------------------------------------------

    def _admit(self, parent_id: str | None, config: SpawnConfig) -> VsmRecord:
        if self.shutting_down:
            raise ShuttingDown("vsmd is shutting down; no new VSMs")
        return self.gate.admit(parent_id, config)

    def _abandon_children(self, rec: VsmRecord) -> None:
        heir = rec.parent  # the nearest ancestor that is not being terminated
        stack = [rec]
        while stack:
            node = stack.pop()
            for child_id in list(node.children):
                child = self.registry.get(child_id)
                if self.effective(child, "on_parent_exit") != "abandon":
                    stack.append(child)  # goes down with the terminate; look below it
                    continue
                # Its own subtree moves with it and keeps running.
                self.registry.reparent(child_id, heir)
                if self.journal is not None:
                    for moved in [child, *self.registry.descendants(child_id)]:
                        self.journal.reparent(moved.id, moved.parent, moved.depth)
                for moved in [child, *self.registry.descendants(child_id)]:
                    # Bound anew: its broadcasts now come from the new parent and ancestors.
                    self._notify(moved, "reparent", {"ancestors": list(self.ancestors(moved))})
                new_parent = self.registry.get(heir).path if heir else "the top level"
                self.events.emit(
                    "abandoned",
                    f"{child.path} outlives {node.path}; its parent is now {new_parent}",
                    child.id,
                    child.path,
                    parent=heir,
                )

    # --- starting --------------------------------------------------------------------------

    def _start(self, rec: VsmRecord) -> None:
        # Every fork request (new VSMs, restarts, restores) until it is on the fork server's
        # socket; a request that fails counts here with its failure handling.
        began = self.steps.begin()
        self._request_fork(rec)
        self.steps.end("fork_request", began)

    def _request_fork(self, rec: VsmRecord) -> None:
        state: dict[str, Any] = {}
        sync = False
        if self.gate.state_policy is not None:
            state, sync = self.gate.state_policy.initial_state(rec)
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
            policy=rec.policy.to_dict(),
            reconnect_max_backoff=self.config.reconnect_max_backoff,
            ancestors=self.ancestors(rec),
            state=state,
            sync=sync,
            mcp=self.config.mcp_server,
            event_loop=self.config.event_loop,
            capabilities=tuple(sorted(self.gate.capabilities_of(rec))),
        )
        rec.forking, rec.term_sent = True, False
        rec.start_requested = time.monotonic()
        rec.timer = self.timers.call_later(
            self.config.spawn_timeout, lambda: self._start_timeout(rec.id)
        )
        try:
            spec = self._in_cgroup(spec, rec)
            if self.prepare_spec is not None:
                spec = self.prepare_spec(spec)
            self.pool.spawn(spec)
        except SpawnError as err:
            self.on_spawn_failed(rec.id, err.message)

    def _in_cgroup(self, spec: VsmSpec, rec: VsmRecord) -> VsmSpec:
        """Its cgroups made and their limits written (from the limits in force now)."""
        if self.cgroups is None:
            return spec
        policy = self._limits(rec)
        began = self.steps.begin()  # a step of its own: the kernel's work, not ours
        try:
            procs = self.cgroups.prepare(
                rec.id, rec.parent, leaf_limits(policy), subtree_limits(policy)
            )
        finally:
            self.steps.end("cgroups", began)
        return dataclasses.replace(spec, cgroup_procs=procs)

    def ancestors(self, rec: VsmRecord) -> tuple[str, ...]:
        """Ids above ``rec``, the root first (its inbox binds their broadcasts)."""
        out: list[str] = []
        node = rec
        while node.parent is not None:
            out.append(node.parent)
            node = self.registry.get(node.parent)
        return tuple(reversed(out))

    def _forget(self, rec: VsmRecord) -> None:
        self.admission.forget(rec.id)
        self.sampler.forget(rec.id)

    def on_spawned(self, vsm_id: str, pid: int) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None:
            # Its start already failed (timed out while the fork was pending): no leak.
            self.pool.kill(pid, signal.SIGKILL)
            return
        rec.pid, rec.forking = pid, False
        log.debug(
            "%s forked as %d after %.1f ms",
            rec.path,
            pid,
            (time.monotonic() - rec.start_requested) * 1000,
        )
        if rec.status is Status.STOPPING:
            self._advance_from(rec.id)

    def on_spawn_failed(self, vsm_id: str, error: str) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None:
            return
        rec.forking = False
        if rec.timer:
            rec.timer.cancel()
        if rec.status is not Status.STARTING:
            self._advance_from(rec.id)
        elif rec.ever_ready:
            rec.last_exit = error
            self._crashed(rec, None, None)
        else:
            self._fail_start(rec, SpawnError(f"cannot start VSM {rec.path}: {error}"))

    def on_ready(self, vsm_id: str, pid: int) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None or rec.status is not Status.STARTING:
            return
        rec.pid = rec.pid or pid
        rec.set_status(Status.RUNNING)
        rec.started_at = time.time()
        rec.ready_at = time.monotonic()
        log.debug("%s ready after %.1f ms", rec.path, (rec.ready_at - rec.start_requested) * 1000)
        self.spawn_ready.observe(rec.ready_at - rec.start_requested)
        if not rec.restarts and not rec.ever_ready:
            self.spawned += 1
        if rec.timer:
            rec.timer.cancel()
        if rec.restarts:
            self._step_event(
                "restarted",
                f"{rec.path} is running again (restart {rec.restarts})",
                rec.id,
                rec.path,
                pid=rec.pid,
            )
        elif rec.ever_ready:
            self._step_event(
                "started",
                f"{rec.path} is running again after a daemon restart",
                rec.id,
                rec.path,
                pid=rec.pid,
            )
        rec.ever_ready = True
        waiters = self._spawn_waiters.pop(rec.id, [])
        if waiters:  # nobody waits on a restart or a restore: no reply step
            began = self.steps.begin()
            for fut in waiters:  # its callbacks encode and publish the reply
                fut.set_result(rec.info())
            self.steps.end("reply", began)

    def _step_event(
        self, kind: str, message: str, vsm_id: str | None, path: str | None, **details: Any
    ) -> None:
        """An event of a spawn (refused, or ready again): its time goes to the events step."""
        began = self.steps.begin()
        self.events.emit(kind, message, vsm_id, path, **details)
        self.steps.end("events", began)

    def on_failure_report(self, vsm_id: str, reason: str) -> None:
        """The VSM said why it is about to exit (its agent raised)."""
        rec = self.registry.find(vsm_id)
        if rec is not None:
            rec.reported = reason[:500]

    def _start_timeout(self, vsm_id: str) -> None:
        rec = self.registry.find(vsm_id)
        if rec is None or rec.status is not Status.STARTING:
            return
        message = f"VSM {rec.path} did not report ready within {self.config.spawn_timeout:g} s"
        if not rec.ever_ready:
            self._fail_start(rec, SpawnError(message))
        elif rec.pid is not None:
            rec.last_reason = message
            self.pool.kill(rec.pid, signal.SIGKILL)  # its exit is then handled as a crash
        else:
            # The fork was never reported (the fork server died with the request): a crash.
            rec.forking = False
            rec.last_exit = "no process was started"
            rec.reported = message
            self._crashed(rec, None, None)

    # --- restore and sampling --------------------------------------------------------------

    def restore(self) -> tuple[int, int]:
        """Re-create the journaled tree; (restored, dropped). Temporary VSMs are not restored."""
        if self.journal is None:
            return 0, 0
        restored = dropped = 0
        for e in self.journal.load():
            policy = Policy(**e.policy)
            rec = VsmRecord(
                id=e.id,
                name=e.name,
                parent=e.parent,
                path=e.path,
                depth=e.depth,
                agent=e.agent,
                config=e.config,
                policy=policy,
                ever_ready=True,
            )
            orphan = e.parent is not None and e.parent not in self.registry
            if (
                orphan
                or self.effective(rec, "restart") == "temporary"
                or e.agent not in self.agents
            ):
                self.journal.delete(e.id)
                dropped += 1
                continue
            self.registry.add(rec)
            self._start(rec)
            restored += 1
        if restored or dropped:
            self.events.emit(
                "restored",
                f"restored {restored} VSMs from the journal"
                f" ({dropped} temporary or orphaned dropped)",
                restored=restored,
                dropped=dropped,
            )
        return restored, dropped

    def _limits(self, rec: VsmRecord) -> Policy:
        if self.gate.state_policy is None:
            return rec.policy
        return policy_limits.tightened(rec, self.gate.state_policy)

    def sample(self, part: int = 0, parts: int = 1) -> None:
        """Sample every ``parts``-th running VSM, starting at ``part``.

        The daemon samples in slices spread over the interval, so a pass over 1,000 VSMs never
        holds its loop (and the admin queue) for the whole pass at once.
        """
        targets = [
            Sample(r.id, r.pid, self._limits(r), self.effective(r, "quota_action"))
            for r in self.registry.in_slice(part, parts)
            if r.status is Status.RUNNING and r.pid
        ]
        metrics, violations = self.sampler.sample(targets)
        sampled = []
        for vsm_id, m in metrics.items():
            rec = self.registry.find(vsm_id)
            if rec is not None:
                rec.metrics = m
                sampled.append(rec)
        self._note_ooms(sampled)
        for v in violations:
            self.on_violation(v)

    def _note_ooms(self, sampled: list[VsmRecord]) -> None:
        """OOM kills in the leaves of the VSMs just sampled; where one counter of the whole
        namespace tells, the leaves are read only when it moved, and then every running VSM's
        (the kill may be in any slice)."""
        cg = self.cgroups
        if cg is None or not cg.oom_anywhere():
            return
        if cg.summed_events:
            sampled = [r for r in self.registry.all() if r.status is Status.RUNNING]
        for rec in sampled:
            self.note_oom(rec)
