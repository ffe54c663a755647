"""What runs inside a VSM process: one asyncio loop for the connection, inbox, timers and agent.

No thread runs unless a plain (synchronous) agent needs one: its methods go to a single worker
thread, one call at a time, so a slow agent never stops heartbeats, replies or pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mcp.server.lowlevel import Server
from setproctitle import setproctitle

from vsmd.agents import AgentRegistry, AsyncAgent, Sender, build_registry, overrides
from vsmd.bus.topology import Topology
from vsmd.errors import (
    AgentError,
    BrokerError,
    Internal,
    ProtocolError,
    Unauthorized,
    VsmdError,
)
from vsmd.mcp.host import McpHost, Session
from vsmd.mcp.registry import McpRegistry
from vsmd.mcp.server import build_server
from vsmd.protocol import Envelope, error_reply, loads_object, ok_reply
from vsmd.spec import EXIT_AGENT, EXIT_BROKER, EXIT_OK, EXIT_SPEC, VsmSpec
from vsmd.vsm import loop as vsm_loop
from vsmd.vsm.authority import admit
from vsmd.vsm.bus import START_CONNECT_TIMEOUT, Made, VsmBus
from vsmd.vsm.calls import Delivery
from vsmd.vsm.context import Context, ThreadContext, unpack_reply
from vsmd.vsm.mcp_tools import BuiltinTools, Events, caller_of
from vsmd.vsm.sync import StateLink, up_message
from vsmd.vsm.traffic import moved as traffic_moved

log = logging.getLogger("vsmd.vsm")
RATE_WINDOW = 5.0  # seconds over which a VSM reports its message rates, give or take a quarter


def rate_window(vsm_id: str) -> float:
    """RATE_WINDOW, 0.75x to 1.25x by the VSM's id: a thousand VSMs woken by one broadcast
    would otherwise all report, and their parent and the daemon take it all, at one instant."""
    return RATE_WINDOW * (0.75 + 0.5 * zlib.crc32(vsm_id.encode()) / 2**32)


# Messages that change the state replica and need no answer.
STATE_TYPES = frozenset(("state", "policy", "forget", "resync"))
# What the consumer's callback takes itself when nobody waits for an answer: those, and the
# liveness probes (the daemon's and requesters'), which the runtime ignores: a probe needs only
# its ack, not a task and a turn of the loop.
TAKEN_NOW = STATE_TYPES | {"probe"}


class VsmRuntime:
    def __init__(
        self, spec: VsmSpec, registry: AgentRegistry, mcp_server: Server[Session] | None = None
    ) -> None:
        self.spec = spec
        self.topo = Topology(spec.namespace)
        self.agent = registry.create(spec.agent, spec.config)
        self.bus = VsmBus(spec, self.topo, self._on_message, self._take_now)
        self.sync = StateLink(spec, self.topo, self.bus, self.call, lambda: self.ctx.parent_id)
        self.state = self.sync.replica
        # Every VSM an MCP server from the start: the tools every VSM has, and the agent's own
        # (ctx.mcp, if its spawn granted mcp); sessions are made as clients come.
        self.mcp = McpRegistry()
        self.ctx = Context(self)
        self.events = Events(self._changed("events"))
        self.state.on_change = self._changed("state")
        self.started = time.time()
        # The per-VSM half of the server (its host and the tools every VSM has) is made for
        # the first MCP message: an idle VSM that nobody asks costs nothing more for it.
        self._mcp_server = mcp_server
        self.mcp_host: McpHost | None = None
        self._thread_ctx: ThreadContext | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stop: asyncio.Event | None = None
        self._started: asyncio.Event | None = None
        self._exit_code = EXIT_OK
        self.refused = 0  # messages that failed validation (counted, answered or dead-lettered)

    def serve_mcp(self) -> McpHost:
        if self.mcp_host is None:
            server = self._mcp_server if self._mcp_server is not None else build_server()
            spec = self.spec
            self.mcp_host = McpHost(server, self.mcp, self.bus.reply, spec.vsm_id, spec.path)
            BuiltinTools(self).register(self.mcp)
        return self.mcp_host

    def _changed(self, resource: str) -> Callable[[], None]:
        uri = f"vsm://{self.spec.vsm_id}/{resource}"

        def changed() -> None:
            if self.mcp_host is not None:
                self.mcp_host.changed(uri)

        return changed

    # --- calling the agent -----------------------------------------------------------------

    async def _agent(self, method: str, *args: Any) -> Any:
        fn: Callable[..., Any] = getattr(self.agent, method)
        if isinstance(self.agent, AsyncAgent):
            return await fn(self.ctx, *args)
        loop = asyncio.get_running_loop()
        if self._executor is None:  # made on first use: an async agent never pays for a thread
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="agent")
            self._thread_ctx = ThreadContext(self.ctx, loop)
        return await loop.run_in_executor(self._executor, lambda: fn(self._thread_ctx, *args))

    async def call(self, key: str, body: bytes, timeout: float) -> Any:
        """A request to another VSM or the daemon: its result, or its error raised."""
        probe = None
        if not key.startswith("up."):
            # A VSM's inbox may vanish while we wait; the daemon's queue does not, and a probe
            # on an up.<path>.<kind> key would reach the daemon as another such request.
            probe = Envelope(type="probe", sender=self.spec.vsm_id, path=self.spec.path).encode()
        reply = await self.bus.request(key, body, timeout, probe)
        return unpack_reply(reply.body)

    def request_stop(self, code: int = 0) -> None:
        self._exit_code = code
        if self._stop is not None:
            self._stop.set()

    # --- the inbox -------------------------------------------------------------------------

    async def _on_message(self, msg: Delivery) -> None:
        try:
            try:
                reply = await self._handle(msg)
            except BrokerError:
                raise
            except Exception:
                # A fault of the runtime's own: the requester gets an answer, not a wait for
                # its whole timeout, and the VSM goes on serving.
                log.exception("vsm %s: handling a message failed", self.spec.vsm_id)
                reply = error_reply(Internal("the VSM failed to handle the message; see its log"))
            if reply is not None and msg.reply_to:
                await self.bus.reply(msg.reply_to, msg.correlation_id, reply)
        except BrokerError:
            pass  # the connection is gone: the main loop reconnects; nothing to ack on it
        finally:
            # Acked once handled, so the prefetch window bounds the handlers in flight.
            with contextlib.suppress(Exception):
                await msg.ack()

    def _take_now(self, msg: Delivery) -> bool:
        """A state message or a probe, handled in the consumer's callback: applied (or
        ignored) without a task and a turn of the loop (in a traced parent, a child's update
        was in the replica 0.09 ms after its delivery against 0.13 ms through a task).
        Anything else, and anything that fails here, takes the task's way (_on_message), which
        answers, dead-letters and counts it as before; what was decoded here travels with it."""
        if msg.reply_to:
            return False
        try:
            env = msg.env = Envelope.decode(msg.body, self.spec.max_message_bytes)
            if env.type not in TAKEN_NOW:
                return False
            if self.spec.token_socket:
                admit(msg, env, self.spec, self.bus.ancestors, self.topo)
            if env.type == "probe":
                return True  # no traffic of ours: not counted
            self._state_message(env)
        except Exception:  # handled again on the task's way, which reports it
            return False
        self.bus.traffic.count_in()
        return True

    async def _handle(self, msg: Delivery) -> bytes | None:
        try:
            env = msg.env or Envelope.decode(msg.body, self.spec.max_message_bytes)
            if env.type != "probe":  # the daemon's liveness probes are no traffic of ours
                self.bus.traffic.count_in()
            if env.type == "mcp":  # its authority is judged per tool by the MCP server
                if not self.spec.mcp:
                    raise ProtocolError("this daemon runs its VSMs without MCP (mcp_server)")
                assert self._started is not None
                await self._started.wait()  # the agent's own tools are registered by then
                await self.serve_mcp().deliver(env, msg.reply_to, caller_of(self, msg, env))
                return None
            if self.spec.token_socket:
                admit(msg, env, self.spec, self.bus.ancestors, self.topo)
            return await self._dispatch(env)
        except Unauthorized as err:
            self.refused += 1
            log.warning("vsm %s refused: %s", self.spec.vsm_id, err.message)
            return error_reply(err) if msg.reply_to else None
        except ProtocolError as err:
            # Bad input: answered where someone asks, else kept with its reason for operators.
            self.refused += 1
            if msg.reply_to:
                return error_reply(err)
            await self.bus.dead_letter(msg.body, f"{err.code}: {err.message}")
            return None
        except VsmdError as err:
            if not msg.reply_to:
                log.warning("vsm %s: a message nobody waits for failed: %s", self.spec.vsm_id, err)
            return error_reply(err)

    async def _dispatch(self, env: Envelope) -> bytes | None:
        if env.type == "probe":
            return None  # a requester checking that we are still here
        if env.type == "ping":
            # "entry" tells how the process began: forked from the fork server, or exec'd.
            entry = os.path.basename(sys.argv[0]) if sys.argv else ""
            return ok_reply(
                {
                    "pong": self.spec.vsm_id,
                    "pid": os.getpid(),
                    "path": self.spec.path,
                    "entry": entry,
                    "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                    "refused": self.refused,
                    # Its own view of its place: True while a re-parenting is being applied.
                    "parent": self.ctx.parent_id,
                    "moving": not self.bus.is_settled,
                }
            )
        if env.type == "reparent" and env.sender == "vsmd":
            ancestors = env.body.get("ancestors")
            if not isinstance(ancestors, list) or not all(isinstance(a, str) for a in ancestors):
                raise ProtocolError("reparent: 'ancestors' must be a list of ids")
            await self.bus.move(tuple(ancestors))  # ctx.parent_id follows its ancestors
            self.state.publish_all()  # the new parent's replica of us starts whole
            return ok_reply({"ancestors": ancestors})
        if env.type == "call":
            return await self._deliver(env)
        if env.type in STATE_TYPES:
            self._state_message(env)
            return None
        raise ProtocolError(f"unknown message type {env.type[:64]!r}")

    def _state_message(self, env: Envelope) -> None:
        if env.type == "state" and env.sender != self.spec.vsm_id:
            self.state.apply_child(env.sender, env.body)  # from a child, on toparent.<us>.*
        elif env.type == "policy" and env.sender == "vsmd":
            origin = env.body.get("origin")
            if not isinstance(origin, str):
                raise ProtocolError("policy: 'origin' must be a VSM id")
            self.state.apply_policy(origin, env.body)
        elif env.type == "forget" and env.sender == "vsmd":
            self.state.forget_child(str(env.body.get("child")))
        elif env.type == "resync" and env.sender == "vsmd":
            self.state.publish_all()  # the daemon reconnected: what it had in hand is gone

    async def _deliver(self, env: Envelope) -> bytes | None:
        kind, args = env.body.get("kind", "call"), env.body.get("args") or {}
        if not isinstance(kind, str) or not isinstance(args, dict):
            raise ProtocolError("call: 'kind' must be a string and 'args' an object")
        if env.sender == self.spec.vsm_id:
            return None  # our own alert, heard as the root of the tree
        within, from_depth = env.body.get("within"), env.body.get("from_depth", 0)
        if within is not None:
            if type(within) is not int or type(from_depth) is not int:
                raise ProtocolError("call: 'within' and 'from_depth' must be integers")
            if self.spec.depth - from_depth > within:
                return None  # a broadcast meant for fewer levels
        assert self._started is not None
        await self._started.wait()  # the agent's start comes before its messages
        try:
            result = await self._agent("handle", kind, args, Sender(env.sender, env.path))
        except VsmdError:
            raise
        except Exception as exc:
            log.exception("vsm %s: agent failed on %r", self.spec.vsm_id, kind)
            raise AgentError(f"the agent failed on {kind!r}: {type(exc).__name__}: {exc}") from None
        try:
            return ok_reply(result)
        except TypeError as exc:  # orjson's: a set, an object, a key that is not a string ...
            raise AgentError(f"the agent's result for {kind!r} is not JSON: {exc}") from None

    # --- lifecycle -------------------------------------------------------------------------

    async def _publish_up(self, kind: str, body: dict[str, Any]) -> None:
        await self.bus.publish(*up_message(self.spec, self.topo, kind, body))

    async def _run_agent(self) -> None:
        """start, then tick every tick_interval if the agent has a tick of its own."""
        assert self._started is not None
        try:
            await self.sync.initial()  # the agent starts with its state back
            if overrides(self.agent, "start"):
                await self._agent("start")
        finally:
            self._started.set()
        if not overrides(self.agent, "tick"):
            return
        while True:
            await asyncio.sleep(self.spec.tick_interval)
            await self._agent("tick")

    async def _report_rates(self) -> None:
        """Messages per second in and out over the last rate_window, into our state when they
        moved (traffic.moved): an idle VSM writes nothing, a busy one at most one update per
        window. Once it has shown zero both ways it sleeps until the next message, not on a
        timer."""
        traffic = self.bus.traffic
        window = rate_window(self.spec.vsm_id)
        last = (0, 0)
        shown = (0.0, 0.0)
        while True:
            if shown == (0.0, 0.0) and (traffic.received, traffic.sent) == last:
                await traffic.until_next()
            await asyncio.sleep(window)
            now = (traffic.received, traffic.sent)
            rates = tuple(round((n - p) / window, 1) for n, p in zip(now, last, strict=True))
            last = now
            if traffic_moved(shown, rates, window):
                shown = (rates[0], rates[1])
                self.state.rates(*shown)

    async def _refresh_tokens(self) -> None:
        """Secure mode: a new token at half its life; the broker does not end a connection
        whose token expired, it refuses what the connection does next."""
        if not self.spec.token_socket:
            return
        while True:
            await asyncio.sleep(max(1.0, self.bus.token_ttl / 2))
            try:
                await self.bus.refresh_token()
            except BrokerError as err:
                log.warning("vsm %s: %s", self.spec.vsm_id, err.message)

    async def _reconnect(self) -> None:
        await self.bus.close()
        backoff = 0.1
        while True:
            try:
                await self.bus.open()
                log.info("vsm %s reconnected to the broker", self.spec.vsm_id)
                self.sync.reconnected()
                return
            except BrokerError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.spec.reconnect_max_backoff)

    async def _report_failure(self, reason: str) -> None:
        """Tell the daemon why we are about to exit, if the broker can still hear us."""
        with contextlib.suppress(VsmdError, MemoryError):
            await asyncio.wait_for(self._publish_up("failed", {"reason": reason[:500]}), 2.0)

    async def _supervise(self, agent: asyncio.Task[None]) -> int:
        """Wait for a stop, a lost broker or the agent's end; reconnect on a lost broker."""
        assert self._stop is not None
        stop = asyncio.ensure_future(self._stop.wait())
        watch: set[asyncio.Future[Any]] = {stop, agent}
        try:
            while True:
                lost = asyncio.ensure_future(self.bus.lost.wait())
                await asyncio.wait(watch | {lost}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                if stop.done():
                    return self._exit_code
                if agent.done() and agent in watch:
                    watch.discard(agent)  # an agent without a tick is done after its start
                    exc = agent.exception()
                    if exc is not None:
                        log.error("vsm %s: agent failed: %r", self.spec.vsm_id, exc)
                        await self._report_failure(f"agent failed: {type(exc).__name__}: {exc}")
                        return EXIT_AGENT
                if self.bus.lost.is_set():
                    log.warning("vsm %s lost the broker; reconnecting", self.spec.vsm_id)
                    await asyncio.wait(
                        {stop, asyncio.ensure_future(self._reconnect())},
                        return_when=asyncio.FIRST_COMPLETED,
                    )
        finally:
            stop.cancel()

    async def main(self, made: Made | None = None) -> int:
        """The VSM's life; ``made``: its broker connection, made ahead by a standby."""
        loop = asyncio.get_running_loop()
        self._stop, self._started = asyncio.Event(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            ready = up_message(self.spec, self.topo, "ready", {"pid": os.getpid()})
            await self.bus.open(START_CONNECT_TIMEOUT, made, ready)
        except BrokerError as err:
            print(f"vsm {self.spec.vsm_id}: cannot start: {err.message}", file=sys.stderr)
            await self.bus.close()
            return EXIT_BROKER
        agent = asyncio.create_task(self._run_agent())
        refresh = asyncio.create_task(self._refresh_tokens())
        rates = asyncio.create_task(self._report_rates())
        code = await self._supervise(agent)
        agent.cancel()
        refresh.cancel()
        rates.cancel()
        if code != EXIT_AGENT and overrides(self.agent, "stop"):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._agent("stop"), 5.0)
        if self.mcp_host is not None:
            await self.mcp_host.close()
        await self.bus.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        return code


def _runtime(
    spec: VsmSpec, registry: AgentRegistry | None, mcp_server: Server[Session] | None
) -> VsmRuntime | None:
    setproctitle(f"vsm {spec.vsm_id} {spec.path}")
    try:
        reg = registry if registry is not None else build_registry(spec.agent_modules)
        return VsmRuntime(spec, reg, mcp_server)
    except VsmdError as err:
        print(f"vsm {spec.vsm_id}: {err.message}", file=sys.stderr)
        return None


def run_vsm(
    spec: VsmSpec, registry: AgentRegistry | None = None, mcp_server: Server[Session] | None = None
) -> int:
    """Entry point of a VSM process, after fork or exec; ``mcp_server`` is the one the fork
    server built for all its VSMs (an exec'd VSM builds its own)."""
    runtime = _runtime(spec, registry, mcp_server)
    if runtime is None:
        return EXIT_SPEC
    return vsm_loop.run(runtime.main(), spec.event_loop)


async def run_vsm_here(
    spec: VsmSpec, registry: AgentRegistry, mcp_server: Server[Session], made: Made | None
) -> int:
    """The same on the running loop, that of a standby which made ``made`` on it."""
    runtime = _runtime(spec, registry, mcp_server)
    if runtime is None:
        if made is not None:
            await made.close()
        return EXIT_SPEC
    return await runtime.main(made)


def main(argv: list[str] | None = None) -> int:
    """``python -m vsmd.vsm.runtime SPEC_JSON``: the fresh-interpreter strategy."""
    args = sys.argv[1:] if argv is None else argv
    try:
        spec = VsmSpec.from_dict(loads_object(args[0].encode(), 1 << 20))
    except (IndexError, VsmdError, TypeError) as exc:
        print(f"vsm: bad spec: {exc}", file=sys.stderr)
        return EXIT_SPEC
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    return run_vsm(spec)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # an agent's worker thread blocked in a call must not hold the exit
