"""A Python client of the daemon's admin queue, used by the CLI and usable on its own.

with VsmClient(namespace="vsm") as c:
    root = c.spawn_recursive_vsm(None, SpawnConfig(name="root"))
    a = c.spawn_recursive_vsm(root.id, SpawnConfig(name="a"))
    print([v.path for v in c.list_child_vsms()])
    print(c.send(a.id, "hello", {"x": 1}, wait=True))
    c.broadcast(root.id, "news", {"n": 1}, depth=1)
    c.policy_set(root.id, {"x-mode": "safe", "max_children": 5})
    print(c.state(a.id)["effective_policy"])
    c.terminate_child_vsm(root.id)
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

from vsmctl.discover import resolve
from vsmd.bus.connection import close_quietly, connect, redact
from vsmd.bus.publish import ConfirmedPublisher
from vsmd.bus.rpc import RpcChannel
from vsmd.bus.subscribe import Subscription
from vsmd.bus.topology import Topology
from vsmd.errors import (
    BrokerError,
    NoDaemon,
    ProtocolError,
    Throttled,
    Unauthorized,
    Unreachable,
    VsmdError,
    from_dict,
)
from vsmd.gcpause import gc_paused
from vsmd.protocol import (
    Command,
    Envelope,
    Events,
    ListVsms,
    Ping,
    PolicySet,
    PolicyShow,
    Show,
    Spawn,
    SpawnConfig,
    StateOf,
    Terminate,
    VsmInfo,
    dumps,
    loads_object,
)
from vsmd.security.credentials import ENV as CRED_ENV
from vsmd.state import decode

DEFAULT_TIMEOUT = 60.0  # above the daemon's default spawn_timeout (30 s)
MAX_REPLY = 64 << 20
RETRY_FIRST = 0.1  # seconds before the first repeat of a request after a lost connection
RETRY_MAX = 1.0
# How vsmd.bus.connection.describe ends a refused login or vhost.
_REFUSED = ("the broker refused the credentials", "the broker denied access to the virtual host")
SENDER = "vsmctl"  # the envelope's sender of everything this client publishes
# What may stand in a routing key as an id; anything else cannot be a VSM's (the daemon says so).
_KEYABLE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class VsmClient:
    def __init__(
        self,
        broker_url: str | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        credentials_path: str | None = None,
    ) -> None:
        # Which daemon, with which login: vsmctl/discover.py (ConfigError, one line, when
        # credentials named or found cannot be read).
        target = resolve(
            broker_url, namespace, os.environ if env is None else env, credentials_path
        )
        self.namespace = target.namespace
        self.broker_url = target.broker_url
        self.credentials = target.credentials
        self.located = target.located
        self.timeout = timeout
        self.topo = Topology(self.namespace)
        self._conn: Any = None
        self._rpc: RpcChannel | None = None
        self._publisher: ConfirmedPublisher | None = None
        self.retried = 0  # admin requests sent again (same key) after a lost connection

    def _no_daemon(self, why: str = "") -> NoDaemon:
        extra = f" ({why})" if why else ""
        if self.located is not None and self.located.where is None:
            extra += f"; {self.located.describe()}"  # the user may wonder why this broker
        return NoDaemon(
            f"no vsmd answering on namespace {self.namespace} at broker "
            f"{redact(self.broker_url)}{extra}"
        )

    def _channel(self) -> RpcChannel:
        if self._rpc is None:
            try:
                self._conn = connect(self.broker_url, heartbeat=0, timeout=min(self.timeout, 5.0))
                self._rpc = RpcChannel(self._conn)
            except BrokerError as err:
                if err.message.endswith(_REFUSED):
                    who = self.credentials.source if self.credentials else "no credentials"
                    raise Unauthorized(
                        f"the broker at {redact(self.broker_url)} refused the login ({who}); "
                        f"give operator or viewer credentials with --credentials or {CRED_ENV}"
                    ) from None
                raise self._no_daemon(err.message) from None
        return self._rpc

    def request(
        self, command: Command, timeout: float | None = None, idem: str | None = None
    ) -> Any:
        """Send one admin command; return its result or raise the daemon's error.

        The request carries an idempotency key (``idem``, a fresh one unless given): after a lost
        connection it is sent again with the same key until ``timeout`` runs out, and the daemon
        answers a key it has seen with the first reply instead of executing the command twice.
        A Timeout leaves the outcome open: ask again with the same ``idem`` to learn it.
        """
        return self._result(self._send_admin(command, timeout, idem))

    def _send_admin(self, command: Command, timeout: float | None, idem: str | None) -> bytes:
        """The raw reply to ``command`` (see ``request``)."""
        wait = self.timeout if timeout is None else timeout
        request = {**command.to_request(), "idem": idem or uuid.uuid4().hex}
        return self._call_admin(dumps(request), time.monotonic() + wait)

    @staticmethod
    def _result(raw: bytes) -> Any:
        """A reply's result, or the daemon's error raised."""
        reply = loads_object(raw, MAX_REPLY)
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply.get("error")
        if not isinstance(error, dict):
            raise VsmdError("malformed reply from vsmd")
        raise from_dict(error)

    def _call_admin(self, body: bytes, deadline: float) -> bytes:
        """The reply to ``body``; sent again, as it is, after a lost connection.

        Before any loss, no broker or no daemon is NO_DAEMON at once; after one, both are what a
        broker or daemon on its way back looks like, so they are waited out until ``deadline``.
        """
        lost: str | None = None
        pause, sent = RETRY_FIRST, 1
        while True:
            try:
                return self._admin_once(body, deadline)
            except NoDaemon:
                if lost is None:
                    raise
            except BrokerError as err:
                lost = lost or err.message
            self.close()  # the next try opens a new connection and reply channel
            if time.monotonic() + pause >= deadline:
                raise self._no_daemon(f"{lost}; sent {sent} times") from None
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)
            sent += 1
            self.retried += 1

    def _admin_once(self, body: bytes, deadline: float) -> bytes:
        rpc = self._channel()  # NoDaemon when no broker answers
        left = max(deadline - time.monotonic(), 0.001)
        try:
            return rpc.call_queue(self.topo.admin_queue, body, left)
        except NoDaemon:  # nobody consumes the admin queue
            raise self._no_daemon() from None

    def send_raw(self, body: bytes, timeout: float | None = None) -> dict[str, Any]:
        """Send bytes as they are (for tests of the daemon's input checks); the decoded reply."""
        rpc = self._channel()
        try:
            raw = rpc.call_queue(
                self.topo.admin_queue, body, self.timeout if timeout is None else timeout
            )
        except BrokerError as err:  # NoDaemon is not a BrokerError and passes through
            raise self._no_daemon(err.message) from None
        return loads_object(raw, MAX_REPLY)

    # --- the operations --------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request(Ping())
        return result

    def spawn_recursive_vsm(
        self,
        parent_id: str | None = None,
        config: SpawnConfig | None = None,
        wait_throttle: bool = False,
    ) -> VsmInfo:
        """Spawn a VSM and return it once ready. With ``wait_throttle``, a THROTTLED refusal is
        retried after its ``retry_after`` until the client's timeout runs out."""
        cmd = Spawn.of(parent_id, config or SpawnConfig())
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return VsmInfo.from_dict(self.request(cmd))
            except Throttled as err:
                if not wait_throttle or time.monotonic() + err.retry_after > deadline:
                    raise
                time.sleep(err.retry_after)

    def terminate_child_vsm(self, vsm_id: str, timeout: float | None = None) -> list[str]:
        # The daemon stops leaves first, each with ``timeout`` of grace: wait long enough.
        wait = max(self.timeout, (timeout or 5.0) * 10 + 5)
        result = self.request(Terminate(id=vsm_id, timeout=timeout), timeout=wait)
        return list(result["terminated"])

    def list_child_vsms(
        self, parent_id: str | None = None, recursive: bool = True
    ) -> list[VsmInfo]:
        raw = self._send_admin(ListVsms(parent=parent_id, recursive=recursive), None, None)
        # The decode only, not the wait for the reply: with 2,700 records and a busy heap, the
        # slowest of 40 decodes took 73 ms with the collector on and 12 ms with it paused.
        with gc_paused():
            return [VsmInfo.adopt(d) for d in self._result(raw)]

    def show(self, vsm_id: str) -> VsmInfo:
        return VsmInfo.from_dict(self.request(Show(id=vsm_id)))

    def _to_vsm(self, vsm_id: str, env: Envelope, timeout: float | None) -> Any:
        """Send an envelope to a VSM's inbox (``vsm.<id>``) and return the result of its reply.

        The request is mandatory and the inbox is probed while we wait, so a VSM that is
        unknown or down, or goes down before it answers, gives NOT_FOUND or UNREACHABLE
        rather than a TIMEOUT; only then is the daemon asked (``show``) which of the two.
        """
        self._keyable(vsm_id)
        wait = self.timeout if timeout is None else timeout
        probe = Envelope(type="probe", sender=SENDER).encode()  # the runtime ignores it
        try:
            raw = self._channel().call(
                self.topo.exchange, self.topo.id_key(vsm_id), env.encode(), wait, probe
            )
        except Unreachable as err:
            raise self._unreachable(vsm_id, err) from None
        except BrokerError as err:
            raise self._no_daemon(err.message) from None
        reply = loads_object(raw, MAX_REPLY)
        if reply.get("ok") is not True:
            raise from_dict(reply.get("error") or {})
        return reply.get("result")

    def _keyable(self, vsm_id: str) -> None:
        """An id that cannot go into a routing key gets the daemon's own NOT_FOUND."""
        if not _KEYABLE_ID.fullmatch(vsm_id):
            self.show(vsm_id)

    def _unreachable(self, vsm_id: str, err: Unreachable) -> VsmdError:
        """NotFound for an id the daemon does not know, else Unreachable with its status."""
        info = self.show(vsm_id)  # raises NotFound
        name = f"VSM {vsm_id} ({info.path})"
        if err.details.get("taken"):
            why = f"{name} went down before it answered (status {info.status})"
        else:
            why = f"{name} is not running (status {info.status}): it has no inbox"
        return Unreachable(why, id=vsm_id, status=info.status)

    def _publish(self, routing_key: str, env: Envelope, mandatory: bool) -> None:
        self._channel()  # connects
        if self._publisher is None:
            self._publisher = ConfirmedPublisher(self._conn)
        try:
            self._publisher.publish(self.topo.exchange, routing_key, env.encode(), mandatory)
        except BrokerError as err:  # Unreachable is no BrokerError: it passes through
            raise self._no_daemon(err.message) from None

    @staticmethod
    def _message(kind: str, body: dict[str, Any] | None, **extra: Any) -> Envelope:
        if not isinstance(kind, str) or not kind:
            raise ProtocolError("kind must be a non-empty string")
        if body is not None and not isinstance(body, dict):
            raise ProtocolError(f"body must be a dict, got {type(body).__name__}")
        return Envelope(
            type="call", sender=SENDER, body={"kind": kind, "args": body or {}, **extra}
        )

    def call(
        self,
        vsm_id: str,
        kind: str,
        args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a message to a VSM's inbox (its agent's ``handle``); the agent's answer."""
        return self._to_vsm(vsm_id, self._message(kind, args), timeout)

    def send(
        self,
        vsm_id: str,
        kind: str,
        body: dict[str, Any] | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Deliver ``kind``/``body`` to the VSM's agent (``handle(ctx, kind, body, sender)``,
        sender ``vsmctl``).

        Without ``wait``: returns None once the broker has put it in the VSM's inbox (publisher
        confirm). With ``wait``: the agent's answer, or its error raised (as ``call``).
        NotFound for an unknown id, Unreachable for a VSM that is down.
        """
        env = self._message(kind, body)
        if wait:
            return self._to_vsm(vsm_id, env, timeout)
        self._keyable(vsm_id)
        try:
            self._publish(self.topo.id_key(vsm_id), env, mandatory=True)
        except Unreachable as err:
            raise self._unreachable(vsm_id, err) from None
        return None

    def broadcast(
        self,
        vsm_id: str,
        kind: str,
        body: dict[str, Any] | None = None,
        depth: int | None = None,
    ) -> None:
        """Deliver to the descendants of ``vsm_id`` (not to the VSM itself), as its own
        ``ctx.broadcast`` would: every one (``depth=None``), its children (1), or those at most
        ``depth`` levels below it. Fire and forget: no answers, and a VSM without descendants is
        no error. NotFound for an unknown id.
        """
        if depth is not None and (type(depth) is not int or depth < 1):
            raise ProtocolError("depth must be 1 or more, or None for the whole subtree")
        env = self._message(kind, body)  # checks kind and body before asking the daemon
        info = self.show(vsm_id)  # NotFound; the depth the receivers count from
        if depth == 1:
            key = self.topo.children_key(info.id)
        else:
            key = self.topo.subtree_key(info.id)
            if depth is not None:
                # Every descendant has the subtree binding; those deeper than asked drop it.
                env = self._message(kind, body, within=depth, from_depth=info.depth)
        self._publish(key, env, mandatory=False)

    def ping_vsm(self, vsm_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Ask the VSM itself (not the daemon) to answer."""
        env = Envelope(type="ping", sender=SENDER)
        result: dict[str, Any] = self._to_vsm(vsm_id, env, timeout)
        return result

    def events(self, since: int = 0, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
        """Buffered supervision events after ``since``: (last sequence number, events)."""
        result = self.request(Events(since=since, limit=limit))
        return int(result["last_seq"]), list(result["events"])

    def follow_events(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """Buffered events after ``since``, then live ones as they happen (never ends)."""
        self._channel()  # connects
        sub = Subscription(self._conn, self.topo.exchange, "event.#")
        try:
            last, backlog = self.events(since)
            yield from backlog
            while True:
                raw = sub.get(1.0)
                if raw is None:
                    continue
                event = loads_object(raw, MAX_REPLY)
                if int(event.get("seq", 0)) > last:  # the backlog may already have had it
                    yield event
        finally:
            sub.close()

    # --- state and policy -----------------------------------------------------------------

    def state(self, vsm_id: str) -> dict[str, Any]:
        """The VSM's state as the daemon's replica holds it: ``identity``, ``policy`` (its own),
        ``metrics`` (with the ``subtree`` summary), ``data``, ``effective_policy``, ``children``."""
        result: dict[str, Any] = self.request(StateOf(id=vsm_id))
        return result

    def policy_set(self, vsm_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Set policy keys on a VSM (``None`` deletes one); they flow down to its subtree.
        Returns the VSM's policy afterwards, as ``policy_show``."""
        result: dict[str, Any] = self.request(PolicySet(id=vsm_id, values=dict(values)))
        return result

    def policy_show(self, vsm_id: str) -> dict[str, Any]:
        """``own``, ``effective`` and ``layers`` (each ancestor's policy, the root first)."""
        result: dict[str, Any] = self.request(PolicyShow(id=vsm_id))
        return result

    def watch(
        self, vsm_id: str, stop: Callable[[], bool] | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """The VSM's state changes as it publishes them, one dict per delta (never ends, or
        ends within a second of ``stop()`` turning true):
        ``{"time", "id", "path", "changes": [{"section", "key", "value"} or {..., "deleted"}]}``.
        Only changes published after the subscription (on the first ``next``) are seen;
        ``close()`` unsubscribes."""
        info = self.show(vsm_id)  # NotFound; the path its deltas go up under
        self._channel()  # connects
        sub = Subscription(self._conn, self.topo.exchange, self.topo.up_key(info.path, "state"))
        try:
            while stop is None or not stop():
                raw = sub.get(1.0)
                delta = None if raw is None else _delta(raw, info.id, info.path)
                if delta is not None:
                    yield delta
        finally:  # a caller that stops iterating keeps using the client without the queue
            sub.close()

    # --- lifetime --------------------------------------------------------------------------

    def mcp(self, target: str, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """``async with client.mcp(vsm_id) as session:`` an initialized MCP ``ClientSession``
        with the VSM (by id or path), over a connection of its own."""
        # Imported here: the MCP SDK is loaded only by those who use MCP, not by list or spawn.
        from vsmd.mcp.client import create_mcp_client

        wait = self.timeout if timeout is None else timeout
        return create_mcp_client(self.broker_url, self.namespace, target, SENDER, wait)

    def close(self) -> None:
        close_quietly(self._conn)
        self._conn, self._rpc, self._publisher = None, None, None

    def __enter__(self) -> VsmClient:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()


def _delta(raw: bytes, vsm_id: str, path: str) -> dict[str, Any] | None:
    """A state delta the VSM published, for people and scripts; None for anything else (a
    malformed message, or another VSM that had the same path before)."""
    try:
        env = Envelope.decode(raw, MAX_REPLY)
        if env.type != "state" or env.sender != vsm_id:
            return None
        entries, _ = decode(env.body)
    except VsmdError:
        return None
    changes: list[dict[str, Any]] = []
    for (section, key), entry in entries.items():
        change: dict[str, Any] = {"section": section, "key": key}
        if entry.deleted:
            change["deleted"] = True
        else:
            change["value"] = entry.value
        changes.append(change)
    return {"time": env.time, "id": vsm_id, "path": path, "changes": changes}
