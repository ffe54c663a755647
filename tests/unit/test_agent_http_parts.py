"""The parts of the api agent that need no broker and no server: the circuit breaker's edges,
the token buckets, the allow-list, the arguments of a call, retries, and what goes back."""

from __future__ import annotations

import asyncio
import random

import pytest

from vsmd.agents import AgentRegistry
from vsmd.agents.allowlist import AllowList, parse_entry
from vsmd.agents.api import ApiAgent
from vsmd.agents.api_call import (
    ApiSettings,
    CallRequest,
    Outcome,
    answer,
    backoff_delay,
    perform,
    retryable,
)
from vsmd.agents.circuit import Circuit, CircuitBreaker, Event, Ticket, transition
from vsmd.agents.http_client import ConnectFailed, Fetched, _origin, holds
from vsmd.agents.ratelimit import RateLimiter, TokenBucket
from vsmd.errors import AgentError, InvalidConfig, ProtocolError, Timeout, Unauthorized


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, threshold: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(threshold, cooldown, clock=clock, wall=lambda: 1.7e9 + clock.now)


def ticket(b: CircuitBreaker) -> Ticket:
    got = b.admit()
    assert isinstance(got, Ticket), got
    return got


# --- circuit breaker -----------------------------------------------------------------------


def test_transition_has_four_edges_and_ignores_the_rest() -> None:
    assert transition(Circuit.CLOSED, Event.TRIPPED) is Circuit.OPEN
    assert transition(Circuit.OPEN, Event.COOLED) is Circuit.HALF_OPEN
    assert transition(Circuit.HALF_OPEN, Event.TRIAL_OK) is Circuit.CLOSED
    assert transition(Circuit.HALF_OPEN, Event.TRIAL_FAILED) is Circuit.OPEN
    for state in Circuit:
        for event in Event:
            if (state, event) not in {
                (Circuit.CLOSED, Event.TRIPPED),
                (Circuit.OPEN, Event.COOLED),
                (Circuit.HALF_OPEN, Event.TRIAL_OK),
                (Circuit.HALF_OPEN, Event.TRIAL_FAILED),
            }:
                assert transition(state, event) is state


def test_circuit_opens_after_n_failures_in_a_row_only() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(2):
        b.record(ticket(b), ok=False)
    b.record(ticket(b), ok=True)  # a success breaks the row
    assert b.snapshot() == {"state": "closed", "failures": 0, "opened_at": None}
    for _ in range(3):
        b.record(ticket(b), ok=False)
    assert b.snapshot() == {"state": "open", "failures": 3, "opened_at": 1.7e9 + 1000.0}
    clock.now += 4
    assert b.admit() == pytest.approx(6.0)  # refused: the rest of the cool-down


def test_half_open_lets_one_trial_through_and_its_outcome_decides() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1, cooldown=10)
    b.record(ticket(b), ok=False)
    clock.now += 10
    assert b.current() is Circuit.HALF_OPEN
    trial = ticket(b)
    assert trial.trial
    assert isinstance(b.admit(), float)  # a second caller waits for the trial
    b.record(trial, ok=False)  # HALF_OPEN -> OPEN, a new cool-down from now
    assert b.snapshot()["state"] == "open" and b.snapshot()["opened_at"] == 1.7e9 + 1010.0
    clock.now += 9.9
    assert b.admit() == pytest.approx(0.1)
    clock.now += 0.1
    trial = ticket(b)
    b.record(trial, ok=True)  # HALF_OPEN -> CLOSED
    assert b.snapshot() == {"state": "closed", "failures": 0, "opened_at": 1.7e9 + 1010.0}
    assert not ticket(b).trial


def test_an_abandoned_trial_frees_its_place_and_late_outcomes_do_not_count() -> None:
    clock = Clock()
    b = breaker(clock, threshold=2, cooldown=1)
    early = ticket(b)  # admitted while closed, answers after the circuit opened
    b.record(ticket(b), ok=False)
    b.record(ticket(b), ok=False)
    b.record(early, ok=True)
    assert b.current() is Circuit.OPEN
    clock.now += 1
    b.abandon(ticket(b))
    assert ticket(b).trial  # the place was free again


# --- token buckets -------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst


def test_each_caller_has_its_own_bucket_and_few_are_kept() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock, max_callers=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert limiter.take("b") == 0.0  # another caller is not held up by a
    for name in "cdefg":
        limiter.take(name)
    assert len(limiter) == 3  # the least recent callers are dropped, memory stays bounded
    clock.now += 1
    assert limiter.take("a") == 0.0


# --- allow-list ----------------------------------------------------------------------------


def test_allow_list_hosts_ports_and_wildcards() -> None:
    allow = AllowList(["api.example.com", "127.0.0.1:8080", "*.internal", "[::1]:9000"])
    assert allow.check("https://API.Example.com./v1?key=x").host == "api.example.com"
    assert allow.check("http://127.0.0.1:8080/").port == 8080
    assert allow.check("http://db.internal/x").origin() == "http://db.internal:80"
    assert allow.check("http://[::1]:9000/").origin() == "http://[::1]:9000"
    refused = [
        "http://127.0.0.1:8081/",  # another port
        "http://127.0.0.1/",  # port 80
        "http://internal/",  # the wildcard is for subdomains
        "http://api.example.com@evil.test/",  # user info is no host
        "http://evil.test/api.example.com",
        "http://localhost:8080/",  # names are not resolved
    ]
    for url in refused:
        with pytest.raises(Unauthorized, match="is not on the allow-list"):
            allow.check(url)
    for url in ("ftp://api.example.com/", "file:///etc/passwd", "api.example.com", "http://"):
        with pytest.raises(ProtocolError):
            allow.check(url)


def test_allow_list_entries_are_checked() -> None:
    assert parse_entry("[::1]").port is None
    for bad in ("http://x", "x/y", "a b", "host:99999", ":80", "*"):
        with pytest.raises(ProtocolError):
            parse_entry(bad)


# --- settings, arguments, retries, answers -------------------------------------------------


def test_config_schemas_refuse_bad_settings_field_by_field() -> None:
    reg = AgentRegistry()
    reg.validate("api", {"allow": ["127.0.0.1"], "retries": 0, "cooldown": 0.5})
    with pytest.raises(InvalidConfig) as refused:
        reg.validate(
            "api",
            {"allow": ["http://x", 5], "retries": -1, "cooldown": 0, "rate": "fast", "x": 1},
        )
    errors = {e["field"]: e["message"] for e in refused.value.details["errors"]}
    assert set(errors) == {"(settings)", "allow.0", "allow.1", "retries", "cooldown", "rate"}
    assert "'x' was unexpected" in errors["(settings)"]
    assert "-1 is less than the minimum of 0" in errors["retries"]
    with pytest.raises(InvalidConfig, match="'allow' is a required property"):
        reg.validate("api", {})
    reg.validate("sensor", {})
    reg.validate("sensor", {"source": {"command": ["date"]}, "period": 0.1, "keep": 5})
    with pytest.raises(InvalidConfig) as refused:
        reg.validate(
            "sensor",
            {"period": -1, "source": {"http": "ftp://x", "file": "/x"}, "keep": 0},
        )
    errors = {e["field"]: e["message"] for e in refused.value.details["errors"]}
    assert errors["period"] == "-1 is less than or equal to the minimum of 0"
    assert "does not match" in errors["source.http"]
    assert "should be non-empty" in errors["keep"] or "minimum of 1" in errors["keep"]
    assert "has too many properties" in errors["source"]
    with pytest.raises(InvalidConfig, match=r"source\.system\.0"):
        reg.validate("sensor", {"source": {"system": ["cpu_temp"]}})
    types = {t["name"]: t for t in reg.describe()}
    assert types["api"]["capabilities"] == ["http", "mcp", "metrics", "state"]
    assert types["sensor"]["capabilities"] == ["http", "mcp", "metrics", "state"]


def test_call_arguments() -> None:
    settings = ApiSettings.from_config({"allow": ["x"], "timeout": 2, "methods": ["GET", "POST"]})
    req = CallRequest.parse({"url": "http://x/", "method": "POST", "json": {"a": 1}}, settings)
    assert req.content == b'{"a":1}' and req.headers == {"content-type": "application/json"}
    assert CallRequest.parse({"url": "http://x/", "timeout": 60}, settings).timeout == 2.0
    with pytest.raises(ProtocolError) as refused:
        CallRequest.parse({"method": "BREW", "headers": {"a": 1}, "extra": True}, settings)
    for part in ("'url' is a required property", "method: 'BREW' is not one of", "headers.a:"):
        assert part in refused.value.message
    with pytest.raises(ProtocolError, match="method DELETE is not allowed here"):
        CallRequest.parse({"url": "http://x/", "method": "DELETE"}, settings)
    with pytest.raises(ProtocolError, match="body or json, not both"):
        CallRequest.parse({"url": "http://x/", "body": "a", "json": 1}, settings)


def fetched(status: int, body: bytes = b"", **headers: str) -> Fetched:
    return Fetched(status, headers, body, False, 0.01)


def test_what_is_retried() -> None:
    assert retryable("POST", None, ConnectFailed("no connection"))  # nothing was sent
    assert not retryable("POST", None, Timeout("slow"))  # it may have been acted on
    assert not retryable("POST", fetched(503), None)
    assert retryable("GET", None, Timeout("slow"))
    assert retryable("PUT", None, AgentError("reset"))
    assert retryable("GET", fetched(502), None)
    assert not retryable("GET", fetched(404), None)
    settings = ApiSettings.from_config({"allow": ["x"], "backoff": 0.1, "backoff_max": 0.3})
    rng = random.Random(1)
    delays = [backoff_delay(a, settings, rng) for a in (1, 2, 3, 4)]
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(0.15 <= d <= 0.3 for d in delays[2:])  # capped


def test_answers_carry_status_headers_body_and_truncation() -> None:
    got = answer(fetched(200, b'{"a": [1]}', **{"content-type": "application/json"}), 2)
    assert got["status"] == 200 and got["json"] == {"a": [1]} and got["attempts"] == 2
    assert got["body"] == '{"a": [1]}' and got["encoding"] == "utf-8" and not got["truncated"]
    cut = answer(Fetched(200, {}, "né".encode()[:2], True, 0.0), 1)
    assert cut["body"] == "n" and cut["truncated"]  # a character cut in two is dropped
    binary = answer(fetched(200, b"\xff\xfe\x00"), 1)
    assert binary["encoding"] == "base64" and binary["body"] == "//4A"
    assert "json" not in answer(fetched(200, b"nope", **{"content-type": "application/json"}), 1)


def test_messages_never_show_a_query_or_a_password() -> None:
    assert _origin("http://u:secret@h:8/p?key=1") == "http://h:8"
    assert _origin("https://h?key=1") == "https://h"


def test_the_http_grant_is_read_from_the_context() -> None:
    class Ctx:
        capabilities = frozenset({"state"})

    assert not holds(Ctx(), "http")
    assert holds(object(), "http")  # a context that records no grant refuses nothing


def test_the_client_is_made_by_the_first_call_and_retried_connects_fail_cleanly() -> None:
    agent = ApiAgent({"allow": ["127.0.0.1"], "retries": 1, "backoff": 0})
    assert not agent.http.made  # nothing at VSM start: a client costs memory
    req = CallRequest.parse({"url": "http://127.0.0.1:1/", "method": "POST"}, agent.settings)

    async def go() -> Outcome:
        try:
            return await perform(agent.http, req, agent.settings, 1, random.Random(0))
        finally:
            assert agent.http.made
            await agent.http.aclose()

    outcome = asyncio.run(go())
    assert outcome.attempts == 2 and outcome.failed  # a POST that never connected is retried
    assert isinstance(outcome.error, ConnectFailed)
    assert outcome.error.message.startswith("cannot connect to http://127.0.0.1:1")
