"""A Python client of the daemon's admin queue, used by the CLI and usable on its own.

with VsmClient(namespace="vsm") as c:
    root = c.spawn_recursive_vsm(None, SpawnConfig(name="root"))
    c.spawn_recursive_vsm(root.id, SpawnConfig(name="a"))
    print([v.path for v in c.list_child_vsms()])
    c.terminate_child_vsm(root.id)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from vsmd.bus.connection import close_quietly, connect, redact
from vsmd.bus.rpc import RpcChannel
from vsmd.bus.subscribe import Subscription
from vsmd.bus.topology import Topology
from vsmd.config import DEFAULT_BROKER_URL
from vsmd.errors import BrokerError, NoDaemon, Throttled, VsmdError, from_dict
from vsmd.protocol import (
    Command,
    Envelope,
    Events,
    ListVsms,
    Ping,
    Show,
    Spawn,
    SpawnConfig,
    Terminate,
    VsmInfo,
    dumps,
    loads_object,
)

DEFAULT_TIMEOUT = 60.0  # above the daemon's default spawn_timeout (30 s)
MAX_REPLY = 64 << 20


class VsmClient:
    def __init__(
        self,
        broker_url: str | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.broker_url = broker_url or env.get("VSM_BROKER_URL") or DEFAULT_BROKER_URL
        self.namespace = namespace or env.get("VSM_NAMESPACE") or "vsm"
        self.timeout = timeout
        self.topo = Topology(self.namespace)
        self._conn: Any = None
        self._rpc: RpcChannel | None = None

    def _no_daemon(self, why: str = "") -> NoDaemon:
        extra = f" ({why})" if why else ""
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
                raise self._no_daemon(err.message) from None
        return self._rpc

    def request(self, command: Command, timeout: float | None = None) -> Any:
        """Send one admin command; return its result or raise the daemon's error."""
        wait = self.timeout if timeout is None else timeout
        rpc = self._channel()
        try:
            raw = rpc.call_queue(self.topo.admin_queue, dumps(command.to_request()), wait)
        except NoDaemon:
            raise self._no_daemon() from None
        except BrokerError as err:
            raise self._no_daemon(err.message) from None
        reply = loads_object(raw, MAX_REPLY)
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply.get("error")
        if not isinstance(error, dict):
            raise VsmdError("malformed reply from vsmd")
        raise from_dict(error)

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
        return [
            VsmInfo.from_dict(d)
            for d in self.request(ListVsms(parent=parent_id, recursive=recursive))
        ]

    def show(self, vsm_id: str) -> VsmInfo:
        return VsmInfo.from_dict(self.request(Show(id=vsm_id)))

    def _to_vsm(self, vsm_id: str, env: Envelope, timeout: float | None) -> Any:
        """Send an envelope to a VSM's inbox and return the result of its reply."""
        info = self.show(vsm_id)
        wait = self.timeout if timeout is None else timeout
        try:
            raw = self._channel().call(
                self.topo.exchange, self.topo.down_key(info.path), env.encode(), wait
            )
        except BrokerError as err:
            raise self._no_daemon(err.message) from None
        reply = loads_object(raw, MAX_REPLY)
        if reply.get("ok") is not True:
            raise from_dict(reply.get("error") or {})
        return reply.get("result")

    def call(
        self,
        vsm_id: str,
        kind: str,
        args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a message to a VSM's inbox (its agent's ``handle``); the agent's answer."""
        env = Envelope(type="call", sender="vsmctl", body={"kind": kind, "args": args or {}})
        return self._to_vsm(vsm_id, env, timeout)

    def ping_vsm(self, vsm_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Ask the VSM itself (not the daemon) to answer."""
        env = Envelope(type="ping", sender="vsmctl")
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
        last, backlog = self.events(since)
        yield from backlog
        while True:
            raw = sub.get(1.0)
            if raw is None:
                continue
            event = loads_object(raw, MAX_REPLY)
            if int(event.get("seq", 0)) > last:  # the backlog may already have had it
                yield event

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        close_quietly(self._conn)
        self._conn, self._rpc = None, None

    def __enter__(self) -> VsmClient:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
