"""The ``api`` agent type: HTTP calls on behalf of its callers, to an allow-list of hosts only,
with timeouts, retries with backoff, a token bucket per caller and a circuit breaker.

A call (``handle`` kind ``call``, or the MCP tool ``call``) goes through, in order: the http
grant, the arguments, the allow-list (nothing is sent to a host not on it), the caller's
bucket, the circuit; then the attempts (api_call.py). The circuit and the outcome go into the
VSM's state, so the parent and operators see a failing upstream without asking.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, ClassVar

from vsmd.agents import AgentContext, AsyncAgent, Sender
from vsmd.agents.allowlist import AllowList, Target
from vsmd.agents.api_call import (
    CALL_SCHEMA,
    CONFIG_SCHEMA,
    ApiSettings,
    CallRequest,
    Outcome,
    answer,
    perform,
)
from vsmd.agents.circuit import Circuit, CircuitBreaker, Ticket
from vsmd.agents.http_client import LazyHttp, require_http
from vsmd.agents.ratelimit import RateLimiter
from vsmd.agents.report import StateWriter
from vsmd.errors import ProtocolError, Throttled, Unauthorized
from vsmd.mcp.registry import Caller

log = logging.getLogger("vsmd.agents")

TOOL_DESCRIPTION = (
    "An HTTP request to a host on this VSM's allow-list: url, method (GET), headers, body or "
    "json, timeout. Answers status, headers, body (up to max_body), truncated."
)


class ApiAgent(AsyncAgent):
    """HTTP calls for its callers to allowed hosts: retries, rate limit, circuit breaker.

    Only hosts on ``allow``; timeouts, retries with backoff, a token bucket per caller and a
    circuit breaker whose state is in the VSM's state and health."""

    config_schema: ClassVar[dict[str, Any]] = CONFIG_SCHEMA
    capabilities: ClassVar[frozenset[str]] = frozenset({"http", "state", "metrics", "mcp"})

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.settings = ApiSettings.from_config(config)
        self.allow = AllowList(self.settings.allow)
        self.limiter = RateLimiter(self.settings.rate, self.settings.burst)
        self.breaker = CircuitBreaker(self.settings.failure_threshold, self.settings.cooldown)
        self.http = LazyHttp()  # the client itself is made by the first call
        self.rng = random.Random()
        self._ctx: AgentContext | None = None
        self._out: StateWriter | None = None
        self._shown: dict[str, Any] | None = None

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self._out = StateWriter(ctx.state, ctx.path)
        try:
            ctx.mcp.tool("call", self._tool, TOOL_DESCRIPTION, CALL_SCHEMA)
        except Unauthorized as err:  # spawned without mcp: callers use messages only
            log.info("%s: no MCP tool: %s", ctx.path, err.message)
        self._show()

    async def tick(self, ctx: AgentContext) -> None:
        self._show()  # an open circuit turns half-open by time alone: say so without a call

    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        if kind == "call":
            return await self.call(ctx, body, sender.id)
        raise ProtocolError(f"api: unknown kind {kind[:64]!r}; it answers 'call'")

    async def stop(self, ctx: AgentContext) -> None:
        await self.http.aclose()

    async def _tool(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        assert self._ctx is not None  # tools are registered in start
        return await self.call(self._ctx, args, caller.id)

    async def call(self, ctx: AgentContext, args: dict[str, Any], caller: str) -> dict[str, Any]:
        """One call for ``caller`` (a sender id: its own bucket)."""
        try:
            require_http(ctx, ctx.path)
            req = CallRequest.parse(args, self.settings)
            target = self.allow.check(req.url)
            self._take_token(caller)
            ticket = self._admit()
        except (ProtocolError, Unauthorized, Throttled):
            self._writer().count("api_refused")
            raise
        try:
            retries = 0 if ticket.trial else self.settings.retries  # a trial tries once
            outcome = await perform(self.http, req, self.settings, retries, self.rng)
        except BaseException:
            self.breaker.abandon(ticket)
            raise
        self.breaker.record(ticket, ok=not outcome.failed)
        self._account(req, target, outcome, caller)
        if outcome.fetched is None:
            assert outcome.error is not None
            raise outcome.error
        return answer(outcome.fetched, outcome.attempts)

    def _take_token(self, caller: str) -> None:
        wait = self.limiter.take(caller)
        if wait > 0:
            raise Throttled(
                f"api: caller {caller[:64]} is over its rate of {self.settings.rate:g} calls/s "
                f"(burst {self.settings.burst}); retry in {wait:.2f} s",
                wait,
                limit="rate",
                caller=caller[:64],
            )

    def _admit(self) -> Ticket:
        """The circuit's leave. One circuit per VSM: an api VSM fronts one upstream service
        (spawn one per service), so a failure anywhere on it counts."""
        admitted = self.breaker.admit()
        self._show()
        if isinstance(admitted, Ticket):
            return admitted
        state = self.breaker.current()
        why = (
            f"open after {self.breaker.failures} failed calls in a row"
            if state is Circuit.OPEN
            else "half-open: a trial call is under way"
        )
        raise Throttled(
            f"api: circuit {why}; calls refused for {admitted:.2f} s",
            admitted,
            limit="circuit",
            circuit=state.value,
        )

    def _account(self, req: CallRequest, target: Target, outcome: Outcome, caller: str) -> None:
        out = self._writer()
        out.count("api_calls")
        out.count("api_retries", outcome.attempts - 1)
        last: dict[str, Any] = {
            "time": round(time.time(), 3),
            "caller": caller[:64],
            "method": req.method,
            "origin": target.origin(),
            "attempts": outcome.attempts,
        }
        if outcome.fetched is not None:
            last["status"] = outcome.fetched.status
        if outcome.error is not None:
            last["error"] = f"{outcome.error.code}: {outcome.error.message}"
        if outcome.failed:
            out.count("api_failures")
        out.set("last_call", last)
        self._show()

    def _show(self) -> None:
        """The circuit into the state and the health, when it changed."""
        snap = self.breaker.snapshot()
        if snap == self._shown:
            return
        self._shown = snap
        out = self._writer()
        out.set("circuit", snap)
        state = snap["state"]
        if state == Circuit.OPEN.value:
            out.health("failing")
        elif state == Circuit.HALF_OPEN.value or snap["failures"]:
            out.health("degraded")
        else:
            out.health("ok")

    def _writer(self) -> StateWriter:
        assert self._out is not None  # made in start, which comes before any message
        return self._out
