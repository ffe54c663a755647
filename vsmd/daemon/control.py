"""The control plane: one handler per admin command, looked up in an explicit registry.

Every request gets exactly one reply, an error reply for anything malformed or refused.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from vsmd import __version__
from vsmd.config import Config
from vsmd.daemon.idempotency import ReplyCache
from vsmd.daemon.metrics import ADMIN_BUCKETS, Histogram
from vsmd.daemon.registry import VsmRecord
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.daemon.state_store import StateStore
from vsmd.daemon.trust import Trust
from vsmd.daemon.violations import Violations
from vsmd.errors import Internal, ProtocolError, Unauthorized, VsmdError
from vsmd.gcpause import gc_paused
from vsmd.protocol import (
    Command,
    Envelope,
    Events,
    ListAgents,
    ListVsms,
    Ping,
    PolicySet,
    PolicyShow,
    Show,
    Spawn,
    StateOf,
    Terminate,
    VsmInfo,
    error_reply,
    ok_reply,
    parse_admin,
)

log = logging.getLogger("vsmd.daemon.control")

Respond = Callable[[bytes], None]
T = TypeVar("T")
Handler = Callable[["Control", Any, Respond], None]


def internal(what: str) -> Internal:
    """The error reply for an unexpected exception; the traceback goes to the daemon's log."""
    return Internal(f"internal error while handling {what}; see the daemon log")


def _answer_when_done(
    fut: Future[T], respond: Respond, shape: Callable[[T], Any], what: str
) -> None:
    def done(f: Future[T]) -> None:
        # Runs inside whatever resolved the future (an exit, a ready report): an exception here
        # would be swallowed by concurrent.futures and the request never answered.
        try:
            exc = f.exception()
            if exc is None:
                reply = ok_reply(shape(f.result()))
            elif isinstance(exc, VsmdError):
                reply = error_reply(exc)
            else:
                log.error("internal error while handling %s", what, exc_info=exc)
                reply = error_reply(internal(what))
        except Exception:
            log.exception("internal error while answering %s", what)
            reply = error_reply(internal(what))
        respond(reply)

    fut.add_done_callback(done)


class Control:
    def __init__(
        self, config: Config, manager: SpawnManager, store: StateStore | None = None
    ) -> None:
        self.config = config
        self.manager = manager
        self.store = store or StateStore(manager.registry, None, lambda _k, _b: None, 1 << 20)
        self.started = time.time()
        self.replies = ReplyCache()
        # For the metrics endpoint, kept on the loop thread: time to answer, refused spawns.
        self.latency: dict[str, Histogram] = {}
        self.refusals: collections.Counter[str] = collections.Counter()
        self.trust: Trust | None = None  # secure mode
        self.violations: Violations | None = None

    # --- admin requests --------------------------------------------------------------------

    def handle_admin(self, body: bytes, respond: Respond, user: str | None = None) -> None:
        started = time.monotonic()
        what = self._handle_admin(body, respond, user)
        # Synchronous answers only: a spawn's wait for its VSM is in vsmd_spawn_ready_seconds.
        if what not in self.latency:
            self.latency[what] = Histogram(ADMIN_BUCKETS)
        self.latency[what].observe(time.monotonic() - started)

    def _handle_admin(self, body: bytes, respond: Respond, user: str | None) -> str:
        """Handle one request; the command's name (or "invalid") for the metrics."""
        what = "an admin request"
        try:
            command, idem = parse_admin(body, self.config.max_message_bytes)
            what = command.cmd
            if self.trust is not None:  # ``user`` is the broker-checked user_id
                self.trust.check_admin(user, what)
            handler = HANDLERS[type(command)]
            if idem is not None and type(command) in ONCE:
                once = self.replies.begin(idem, respond)
                if once is None:
                    log.info("admin %s with a known idempotency key: not executed again", what)
                    return what
                respond = once
            handler(self, command, respond)
        except VsmdError as err:
            log.info("admin request refused: %s %s", err.code, err.message)
            self._count(err, user, f"admin {what}")
            respond(error_reply(err))
        except Exception:
            # A bug met by one request costs that request, never the daemon and its VSMs.
            log.exception("internal error while handling %s", what)
            respond(error_reply(internal(what)))
        # Bounded label values: a known command, or one word for everything unparsable.
        return what if what != "an admin request" else "invalid"

    def ping(self, _cmd: Ping, respond: Respond) -> None:
        respond(
            ok_reply(
                {
                    "pong": True,
                    "version": __version__,
                    "namespace": self.config.namespace,
                    "pid": os.getpid(),
                    "uptime": round(time.time() - self.started, 3),
                    "vsms": len(self.manager.registry),
                    "idempotency": {"keys": len(self.replies), **self.replies.stats.to_dict()},
                    "spawn_steps": self.manager.steps.snapshot(),
                }
            )
        )

    def spawn(self, cmd: Spawn, respond: Respond) -> None:
        fut = self._spawn(cmd.parent, cmd)
        _answer_when_done(fut, respond, VsmInfo.to_dict, "spawn")

    def _spawn(self, parent: str | None, cmd: Spawn) -> Future[VsmInfo]:
        fut = self.manager.spawn_recursive_vsm(parent, cmd.spawn_config())

        def count_refusal(f: Future[VsmInfo]) -> None:
            exc = f.exception()
            if isinstance(exc, VsmdError):
                self.refusals[exc.code] += 1

        fut.add_done_callback(count_refusal)
        return fut

    def list(self, cmd: ListVsms, respond: Respond) -> None:
        # Thousands of new dicts, none of them garbage: collections set off by them would walk
        # them again and again (and a full one every record of the registry) on the loop.
        with gc_paused():
            respond(ok_reply(self.manager.list_dicts(cmd.parent, cmd.recursive)))

    def agents(self, _cmd: ListAgents, respond: Respond) -> None:
        respond(ok_reply(self.manager.agents.describe()))

    def show(self, cmd: Show, respond: Respond) -> None:
        respond(ok_reply(self.manager.show(cmd.id).to_dict()))

    def events(self, cmd: Events, respond: Respond) -> None:
        log_ = self.manager.events
        respond(
            ok_reply(
                {
                    "last_seq": log_.last_seq,
                    "events": [e.to_dict() for e in log_.since(cmd.since, cmd.limit)],
                }
            )
        )

    def terminate(self, cmd: Terminate, respond: Respond) -> None:
        if cmd.timeout is not None and not 0 < cmd.timeout <= 3600:
            raise ProtocolError(
                "terminate: 'timeout' must be between 0 and 3600 seconds", field="timeout"
            )
        fut = self.manager.terminate_child_vsm(cmd.id, cmd.timeout)
        _answer_when_done(fut, respond, lambda ids: {"terminated": ids}, "terminate")

    # --- requests from VSMs over the tree's exchange ---------------------------------------

    def handle_vsm(
        self, path: str, kind: str, body: bytes, respond: Respond, user: str | None = None
    ) -> None:
        if kind != "ready":
            self._handle_vsm(path, kind, body, respond, user)
            return
        # A step of every spawn: decoding and checking the report count, not only on_ready.
        began = self.manager.steps.begin()
        self._handle_vsm(path, kind, body, respond, user)
        self.manager.steps.end("ready", began)

    def _handle_vsm(
        self, path: str, kind: str, body: bytes, respond: Respond, user: str | None
    ) -> None:
        try:
            env = Envelope.decode(body, self.config.max_message_bytes)
            if self.trust is not None:
                self.trust.check_vsm(user, env.sender)
            sender = self.manager.registry.find(env.sender)
            # The routing key carries the sender's path; it must be the VSM it claims to be.
            if sender is None or sender.path != path:
                raise Unauthorized(f"message from {env.sender[:64]!r} does not match path {path!r}")
            if env.type != kind:  # e.g. a probe sent to the daemon's key must not spawn
                raise ProtocolError(f"a {env.type[:32]!r} envelope on a {kind[:32]!r} key")
            self._vsm_request(kind, sender, env, respond)
        except VsmdError as err:
            log.info("request from VSM %s refused: %s %s", path, err.code, err.message)
            self._count(err, user, f"{kind[:32]} as {path[:100]}")
            respond(error_reply(err))
        except Exception:
            what = f"{kind[:64]} from VSM {path}"
            log.exception("internal error while handling %s", what)
            respond(error_reply(internal(what)))

    def _vsm_request(self, kind: str, sender: VsmRecord, env: Envelope, respond: Respond) -> None:
        if kind == "ready":
            pid = env.body.get("pid")
            self.manager.on_ready(sender.id, pid if isinstance(pid, int) else 0)
        elif kind == "failed":
            self.manager.on_failure_report(sender.id, str(env.body.get("reason", "")))
        elif kind in ("state", "sync", "flush"):
            self._state_request(kind, sender, env, respond)
        elif kind == "spawn":
            self.manager.gate.require(sender, "spawn")
            cmd = Spawn.from_args(env.body)
            # A VSM's authority is its subtree: children of its own, or of a descendant.
            fut = self._spawn(self._within(sender, cmd.parent), cmd)
            _answer_when_done(fut, respond, VsmInfo.to_dict, f"spawn from VSM {sender.path}")
        elif kind in ("children", "terminate", "policy"):
            self._subtree_request(kind, sender, env, respond)
        else:
            raise ProtocolError(f"unknown message kind {kind[:64]!r}")

    def _count(self, err: VsmdError, user: str | None, what: str) -> None:
        if isinstance(err, Unauthorized) and self.violations is not None:
            self.violations.refused(user, what, err.message)

    def _within(self, sender: VsmRecord, target: str | None) -> str:
        """``target`` (default: the sender) if it is the sender or below it, else Unauthorized."""
        if target is None or target == sender.id:
            return sender.id
        node = self.manager.registry.find(target)
        while node is not None and node.parent is not None:
            if node.parent == sender.id:
                return target
            node = self.manager.registry.find(node.parent)
        raise Unauthorized(f"VSM {sender.path} may not act on {target[:64]!r}: not in its subtree")

    def _subtree_request(
        self, kind: str, sender: VsmRecord, env: Envelope, respond: Respond
    ) -> None:
        """What a VSM's MCP tools ask of the daemon, each within the asking VSM's subtree."""
        target = env.body.get("id")
        if target is not None and not isinstance(target, str):
            raise ProtocolError(f"{kind}: 'id' must be a VSM id", field="id")
        if kind == "children":
            parent = self._within(sender, target)
            recursive = env.body.get("recursive") is True
            respond(ok_reply(self.manager.list_dicts(parent, recursive)))
        elif kind == "terminate":
            if target is None or target == sender.id:
                raise Unauthorized(f"VSM {sender.path} may terminate its descendants, not itself")
            fut = self.manager.terminate_child_vsm(self._within(sender, target), None)
            _answer_when_done(
                fut, respond, lambda ids: {"terminated": ids}, f"terminate from {sender.path}"
            )
        else:
            values = env.body.get("values")
            if not isinstance(values, dict):
                raise ProtocolError("policy: 'values' must be an object", field="values")
            respond(ok_reply(self.store.set_policy(self._within(sender, target), values)))

    def _state_request(self, kind: str, sender: VsmRecord, env: Envelope, respond: Respond) -> None:
        if kind == "state":
            self.store.on_state(sender, env.body)
        elif kind == "sync":
            respond(ok_reply(self.store.snapshot_for(sender)))
        else:
            self.store.on_flush(respond)

    # --- state and policy (admin) ----------------------------------------------------------

    def state(self, cmd: StateOf, respond: Respond) -> None:
        respond(ok_reply(self.store.view(self.manager.registry.get(cmd.id))))

    def policy_set(self, cmd: PolicySet, respond: Respond) -> None:
        respond(ok_reply(self.store.set_policy(cmd.id, cmd.values)))

    def policy_show(self, cmd: PolicyShow, respond: Respond) -> None:
        respond(ok_reply(self.store.policy_view(self.manager.registry.get(cmd.id))))

    def handle_alert(self, sender_id: str, body: bytes, user: str | None = None) -> None:
        """An algedonic alert from a VSM (key ``alg.<root>.<sender>``): an ``alert`` event."""
        try:
            env = Envelope.decode(body, self.config.max_message_bytes)
            if self.trust is not None:
                self.trust.check_vsm(user, env.sender)
            sender = self.manager.registry.find(env.sender)
            if sender is None or sender.id != sender_id:
                raise Unauthorized(f"alert from {env.sender[:64]!r} under key of {sender_id!r}")
            args = env.body.get("args")
            if not isinstance(args, dict):
                raise ProtocolError("alert: 'args' must be an object")
            severity = str(args.get("severity", "warning"))[:16]
            text = str(args.get("text", ""))[:2000]
            self.manager.events.emit(
                "alert",
                f"{sender.path}: {severity}: {text}",
                sender.id,
                sender.path,
                level=logging.WARNING if severity in ("info", "warning") else logging.ERROR,
                severity=severity,
                text=text,
                data=args.get("data") if isinstance(args.get("data"), dict) else {},
            )
        except VsmdError as err:
            # Nobody waits for an answer to an alert: it is logged and counted as refused.
            log.info("alert refused: %s %s", err.code, err.message)
            self._count(err, user, "an alert")


# Commands that change something: a repeat with the same idempotency key gets the first reply.
# The others are answered afresh (a stored `list` of 1,000 VSMs would be large and stale).
ONCE: frozenset[type[Command]] = frozenset({Spawn, Terminate, PolicySet})

HANDLERS: dict[type[Command], Handler] = {
    Ping: Control.ping,
    Spawn: Control.spawn,
    ListVsms: Control.list,
    ListAgents: Control.agents,
    Show: Control.show,
    Terminate: Control.terminate,
    Events: Control.events,
    StateOf: Control.state,
    PolicySet: Control.policy_set,
    PolicyShow: Control.policy_show,
}
