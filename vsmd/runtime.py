"""What runs inside a VSM process: its bus connection, inbox, agent loop and stop handling."""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import pika
import pika.spec
from setproctitle import setproctitle

from vsmd.agents import Agent, AgentRegistry, BaseAgent, build_registry
from vsmd.bus.connection import BUS_ERRORS, CONNECTION_ERRORS, close_quietly, connect, describe
from vsmd.bus.rpc import RpcChannel
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError, ProtocolError, VsmdError, from_dict
from vsmd.protocol import Envelope, error_reply, loads_object, ok_reply
from vsmd.spec import VsmSpec

log = logging.getLogger("vsmd.vsm")

# Exit codes a VSM uses, so the daemon can say why a start failed.
EXIT_OK = 0
EXIT_BROKER = 3
EXIT_AGENT = 4
EXIT_SPEC = 5
IDLE_WAIT = 30.0  # longest broker wait of a VSM whose agent does not tick

EXIT_REASONS = {
    EXIT_BROKER: "the VSM could not reach the broker",
    EXIT_AGENT: "the VSM's agent failed",
    EXIT_SPEC: "the VSM was given a bad spec",
}


class _Interrupt(BaseException):
    """Raised from the signal handler to leave a blocking broker wait at once.

    A BaseException, so that no ``except Exception`` inside pika's I/O swallows the stop."""


Delivery = tuple[pika.spec.BasicProperties, bytes, int]


class VsmRuntime:
    def __init__(self, spec: VsmSpec, registry: AgentRegistry) -> None:
        self.spec = spec
        self.vsm_id = spec.vsm_id
        self.name = spec.name
        self.path = spec.path
        self.depth = spec.depth
        self.config = spec.config
        self.topo = Topology(spec.namespace)
        self._agent: Agent = registry.create(spec.agent, spec.config)
        # An agent without a tick of its own needs no timer: the VSM then sleeps until a message
        # or a signal (pika still answers heartbeats inside the wait), instead of waking every
        # tick_interval; 1,000 idle VSMs cost a tenth of a core that way.
        self._ticks = getattr(type(self._agent), "tick", None) is not BaseAgent.tick
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._rpc: RpcChannel | None = None
        self._inbox: collections.deque[Delivery] = collections.deque()
        self._stop = False
        self._exit_code = EXIT_OK
        self._waiting = False
        self._backoff = 0.1

    # --- AgentContext -----------------------------------------------------------------------

    def spawn_child(
        self,
        name: str | None = None,
        agent: str | None = None,
        config: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self._rpc is None:
            raise BrokerError("not connected to the broker")
        # Policy fields (restart, memory_mb, budget_descendants ...) travel as in an admin spawn.
        body: dict[str, Any] = {**(policy or {}), "config": config or {}}
        if name is not None:
            body["name"] = name
        if agent is not None:
            body["agent"] = agent
        env = Envelope(type="spawn", sender=self.vsm_id, body=body)
        raw = self._rpc.call(
            self.topo.exchange, self.topo.up_key(self.path, "spawn"), env.encode(), timeout=60.0
        )
        reply = loads_object(raw, 1 << 24)
        if not reply.get("ok"):
            raise from_dict(reply.get("error") or {})
        result: dict[str, Any] = reply["result"]
        return result

    def request_stop(self, code: int = 0) -> None:
        self._stop = True
        self._exit_code = code

    # --- lifecycle --------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop = True
        if self._waiting:
            raise _Interrupt

    def _open(self) -> None:
        conn = connect(self.spec.broker_url, self.spec.heartbeat)
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=32)
            # Not exclusive: the inbox outlives a crash so a restarted VSM finds what was sent to
            # it; the daemon deletes it when the VSM is gone for good, x-expires sweeps leftovers.
            ch.queue_declare(self.topo.inbox(self.vsm_id), arguments={"x-expires": 600_000})
            ch.queue_bind(
                self.topo.inbox(self.vsm_id), self.topo.exchange, self.topo.down_key(self.path)
            )
            ch.basic_consume(self.topo.inbox(self.vsm_id), self._on_message)
            self._rpc = RpcChannel(conn, ch)
        except CONNECTION_ERRORS as exc:
            close_quietly(conn)
            raise BrokerError(f"cannot set up the inbox: {describe(exc)}") from None
        self._conn, self._ch = conn, ch

    def _on_message(
        self, _ch: Any, method: Any, props: pika.spec.BasicProperties, body: bytes
    ) -> None:
        # Only queue it: handling may itself wait on the broker (spawn_child), which must not
        # happen inside a pika callback.
        self._inbox.append((props, body, method.delivery_tag))

    def _publish(self, kind: str, body: dict[str, Any]) -> None:
        # On the channel the RPCs use: a "ready" must reach the daemon before any request the
        # agent makes next, and AMQP orders messages per channel only.
        assert self._rpc is not None
        env = Envelope(type=kind, sender=self.vsm_id, body=body)
        self._rpc.notify(self.topo.exchange, self.topo.up_key(self.path, kind), env.encode())

    def _report_failure(self, reason: str) -> None:
        """Tell the daemon why we are about to exit, if the broker can still hear us."""
        try:
            if self._rpc is not None:
                self._publish("failed", {"reason": reason[:500]})
                if self._conn is not None:
                    self._conn.process_data_events(time_limit=0)  # flush before exiting
        except BUS_ERRORS:
            pass  # the exit code still tells the daemon that the agent failed
        except MemoryError:
            pass

    def _handle(self, props: pika.spec.BasicProperties, raw: bytes) -> bytes:
        try:
            env = Envelope.decode(raw, self.spec.max_message_bytes)
            if env.type == "ping":
                # "entry" tells how the process began: forked from the fork server, or exec'd.
                entry = os.path.basename(sys.argv[0]) if sys.argv else ""
                return ok_reply(
                    {"pong": self.vsm_id, "pid": os.getpid(), "path": self.path, "entry": entry}
                )
            if env.type == "call":
                kind = env.body.get("kind", "call")
                if not isinstance(kind, str):
                    raise ProtocolError("call: 'kind' must be a string")
                return ok_reply(self._agent.handle(self, kind, env.body.get("args") or {}))
            raise ProtocolError(f"unknown message type {env.type[:64]!r}")
        except VsmdError as err:
            return error_reply(err)

    def _drain_inbox(self) -> None:
        while self._inbox:
            props, raw, tag = self._inbox.popleft()
            # Ack before the agent sees it: a message that crashes the agent must not come back
            # to the restarted VSM and crash it again (at-most-once for agent calls).
            self._ch.basic_ack(tag)
            reply = self._handle(props, raw)
            if props.reply_to:
                self._ch.basic_publish(
                    "",
                    props.reply_to,
                    reply,
                    pika.BasicProperties(correlation_id=props.correlation_id),
                )

    def _wait(self, seconds: float) -> None:
        self._waiting = True
        try:
            if self._stop:
                return
            if self._conn is not None:
                self._conn.process_data_events(time_limit=seconds)
            else:
                time.sleep(seconds)
        except _Interrupt:
            pass
        finally:
            self._waiting = False

    def _reconnect(self) -> None:
        if self._stop:
            return
        try:
            self._open()
            self._backoff = 0.1
            log.info("vsm %s reconnected to the broker", self.vsm_id)
        except BrokerError:
            self._wait(self._backoff)
            self._backoff = min(self._backoff * 2, self.spec.reconnect_max_backoff)

    def _step(self, next_tick: float) -> float:
        if self._conn is None:
            self._reconnect()
            return next_tick
        try:
            limit = min(next_tick - time.monotonic(), 1.0) if self._ticks else IDLE_WAIT
            self._wait(max(0.0, limit))
            self._drain_inbox()
        except BUS_ERRORS as exc:
            log.warning("vsm %s lost the broker: %s", self.vsm_id, describe(exc))
            close_quietly(self._conn)
            self._conn, self._ch, self._rpc = None, None, None
            self._inbox.clear()  # unacked deliveries are redelivered by the broker
        if self._ticks and time.monotonic() >= next_tick and not self._stop:
            self._agent.tick(self)
            next_tick = time.monotonic() + self.spec.tick_interval
        return next_tick

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._open()
            self._publish("ready", {"pid": os.getpid()})
        except BUS_ERRORS as exc:
            print(f"vsm {self.vsm_id}: cannot start: {describe(exc)}", file=sys.stderr)
            return EXIT_BROKER
        try:
            self._agent.start(self)
            next_tick = time.monotonic() + self.spec.tick_interval
            while not self._stop:
                next_tick = self._step(next_tick)
            self._agent.stop(self)
        except _Interrupt:
            self._agent.stop(self)
        except Exception as exc:
            log.exception("vsm %s: agent failed: %s", self.vsm_id, exc)
            self._report_failure(f"agent failed: {type(exc).__name__}: {exc}")
            return EXIT_AGENT
        finally:
            close_quietly(self._conn)
        return self._exit_code


def run_vsm(spec: VsmSpec, registry: AgentRegistry | None = None) -> int:
    """Entry point of a VSM process, after fork or exec."""
    setproctitle(f"vsm {spec.vsm_id} {spec.path}")
    try:
        reg = registry if registry is not None else build_registry(spec.agent_modules)
        runtime = VsmRuntime(spec, reg)
    except VsmdError as err:
        print(f"vsm {spec.vsm_id}: {err.message}", file=sys.stderr)
        return EXIT_SPEC
    return runtime.run()


def main(argv: list[str] | None = None) -> int:
    """``python -m vsmd.runtime SPEC_JSON``: the fresh-interpreter strategy."""
    args = sys.argv[1:] if argv is None else argv
    try:
        spec = VsmSpec.from_dict(loads_object(args[0].encode(), 1 << 20))
    except (IndexError, VsmdError, TypeError) as exc:
        print(f"vsm: bad spec: {exc}", file=sys.stderr)
        return EXIT_SPEC
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we report in our own words
    return run_vsm(spec)


if __name__ == "__main__":
    raise SystemExit(main())
