"""The worker's parts that need no broker: task messages, the task registry, and what the
runner does with each kind of delivery (an in-memory Delivery records what it was told)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from vsmd.agents import AgentRegistry
from vsmd.agents.worker import WorkerAgent, owns_task_queue
from vsmd.errors import (
    BadJson,
    BrokerError,
    ConfigError,
    InvalidConfig,
    NotFound,
    ProtocolError,
    Unauthorized,
)
from vsmd.protocol import Envelope
from vsmd.tasks.message import ATTEMPTS, TaskRequest, attempts_of, check_name
from vsmd.tasks.registry import TaskRegistry, load_tasks, run_task
from vsmd.tasks.runner import WENT_DOWN, TaskRunner

LIMIT = 65536


# --- messages --------------------------------------------------------------------------------


def test_a_task_round_trips() -> None:
    req = TaskRequest("images.resize", {"w": 3}, "vsmctl")
    back = TaskRequest.decode(req.encode(), LIMIT)
    assert back == req


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"task": "x", "args": [1]}, "args must be a JSON object"),
        ({"task": "bad name", "args": {}}, "bad task name"),
        ({"task": 7}, "bad task name"),
        ({"args": {}}, "bad task name"),
        ({"task": "x", "code": "import os"}, "unknown fields"),
    ],
)
def test_malformed_tasks_are_refused(body: dict[str, Any], error: str) -> None:
    raw = Envelope(type="task", sender="vsmctl", body=body).encode()
    with pytest.raises(ProtocolError, match=error):
        TaskRequest.decode(raw, LIMIT)


def test_only_task_envelopes_and_json_pass() -> None:
    with pytest.raises(ProtocolError, match="takes tasks, not 'call'"):
        TaskRequest.decode(Envelope(type="call", sender="x").encode(), LIMIT)
    with pytest.raises(BadJson):
        TaskRequest.decode(b"{nope", LIMIT)


def test_names() -> None:
    assert check_name("a.b:c-d_9") == "a.b:c-d_9"
    for bad in ("", ".hidden", "x" * 65, "with space", None):
        with pytest.raises(ProtocolError):
            check_name(bad)


@pytest.mark.parametrize(
    ("headers", "count"),
    [(None, 0), ({}, 0), ({ATTEMPTS: 2}, 2), ({ATTEMPTS: -1}, 0), ({ATTEMPTS: True}, 0)],
)
def test_attempts_header(headers: dict[str, Any] | None, count: int) -> None:
    assert attempts_of(headers) == count


# --- the registry ----------------------------------------------------------------------------


def test_tasks_from_a_module_and_a_served_subset() -> None:
    reg = load_tasks(["tests.support.task_funcs"], entry_points=False)
    assert {"add", "shout", "boom"} <= set(reg.names())
    only = reg.only(["add"])
    assert only.names() == ["add"]
    with pytest.raises(NotFound, match="this worker serves: add"):
        only.get("boom")
    with pytest.raises(ConfigError, match="no such tasks: nope"):
        reg.only(["add", "nope"])


def test_unusable_modules_and_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import tasks module"):
        load_tasks(["no_such_module_here"], entry_points=False)
    with pytest.raises(ConfigError, match="has no register_tasks"):
        load_tasks(["json"], entry_points=False)
    reg = TaskRegistry()
    with pytest.raises(ConfigError, match="bad task name"):
        reg.register("no spaces", len)
    with pytest.raises(ConfigError, match="not callable"):
        reg.register("x", 3)  # type: ignore[arg-type]


def test_plain_tasks_go_through_run_sync_async_ones_do_not() -> None:
    ran: list[str] = []

    async def in_thread(fn: Callable[[], Any]) -> Any:
        ran.append("thread")
        return fn()

    async def double(args: dict[str, Any]) -> int:
        return int(args["n"]) * 2

    async def main() -> tuple[Any, Any]:
        plain = await run_task(lambda a: a["n"] + 1, {"n": 1}, in_thread)
        return plain, await run_task(double, {"n": 4}, in_thread)

    assert asyncio.run(main()) == (2, 8)
    assert ran == ["thread"]


# --- the worker type -------------------------------------------------------------------------


def test_settings_schema_and_queue_ownership() -> None:
    agents = AgentRegistry()
    agents.validate("worker", {"concurrency": 8, "max_attempts": 2, "tasks": ["a"]})
    with pytest.raises(InvalidConfig) as err:
        agents.validate("worker", {"concurrency": 0, "tasks": "add", "queue_expires": 5})
    fields = {e["field"] for e in err.value.details["errors"]}
    assert fields == {"concurrency", "tasks", "queue_expires"}
    assert owns_task_queue(agents, "worker")
    assert not owns_task_queue(agents, "noop")
    assert not owns_task_queue(agents, "nosuch")
    with pytest.raises(ConfigError, match="names no task"):
        WorkerAgent({"tasks": []})


# --- the runner ------------------------------------------------------------------------------


@dataclass
class FakeDelivery:
    body: bytes
    redelivered: bool = False
    attempts: int = 0
    reply_to: str | None = "amq.rabbitmq.reply-to.x"
    user: str | None = None
    broken: bool = False  # the connection is gone: every settling call fails
    said: list[tuple[str, Any]] = field(default_factory=list)

    def _check(self) -> None:
        if self.broken:
            raise BrokerError("gone")

    async def reply(self, payload: bytes) -> None:
        self._check()
        self.said.append(("reply", orjson.loads(payload)))

    async def retry(self, attempts: int, error: str) -> None:
        self._check()
        self.said.append(("retry", (attempts, error)))

    async def dead_letter(self, reason: str, task: str, error: str, attempts: int) -> None:
        self._check()
        self.said.append(("dead", (reason, task, error, attempts)))

    async def ack(self) -> None:
        self._check()
        self.said.append(("ack", None))


def _registry() -> TaskRegistry:
    reg = TaskRegistry()
    reg.register("add", lambda a: a["a"] + a["b"])

    def boom(_a: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    def picky(_a: dict[str, Any]) -> None:
        raise ProtocolError("wants a thing")

    reg.register("boom", boom)
    reg.register("picky", picky)
    return reg


def _admit(user: str | None) -> None:
    if user == "stranger":
        raise Unauthorized("stranger may not give tasks")


async def _in_place(fn: Callable[[], Any]) -> Any:
    return fn()


def run(d: FakeDelivery, max_attempts: int = 3) -> TaskRunner:
    runner = TaskRunner(_registry(), max_attempts, _in_place, _admit, LIMIT, "w")
    asyncio.run(runner(d))
    return runner


def task(name: str, **args: Any) -> bytes:
    return TaskRequest(name, args, "vsmctl").encode()


def test_a_result_is_replied_then_acked() -> None:
    d = FakeDelivery(task("add", a=1, b=2))
    r = run(d)
    assert d.said == [("reply", {"ok": True, "result": 3}), ("ack", None)]
    assert (r.counts.done, r.counts.failed, r.counts.running) == (1, 0, 0)


def test_a_failure_goes_back_with_its_count_then_to_the_dead_letters() -> None:
    d = FakeDelivery(task("boom"), attempts=1)
    run(d)
    assert d.said == [("retry", (2, "RuntimeError: boom")), ("ack", None)]
    d = FakeDelivery(task("boom"), attempts=2)
    r = run(d)
    kind, error = d.said[0]
    assert kind == "reply" and error["error"]["code"] == "AGENT_ERROR"
    assert error["error"]["details"] == {"task": "boom", "attempts": 3}
    reason, name, err, attempts = d.said[1][1]
    assert d.said[1][0] == "dead" and reason.startswith("AGENT_ERROR: task 'boom' failed after 3")
    assert (name, err, attempts) == ("boom", "RuntimeError: boom", 3)
    assert d.said[2] == ("ack", None) and r.counts.failed == 1


def test_a_delivery_after_a_death_counts_the_lost_attempt_before_it_runs() -> None:
    d = FakeDelivery(task("add", a=1, b=1), redelivered=True)
    r = run(d)
    assert d.said == [("retry", (1, WENT_DOWN)), ("ack", None)]
    assert r.counts.retried == 1 and r.counts.done == 0
    d = FakeDelivery(task("add", a=1, b=1), redelivered=True, attempts=2, reply_to=None)
    run(d)
    assert [k for k, _ in d.said] == ["dead", "ack"] and d.said[0][1][2] == WENT_DOWN


def test_bad_input_is_not_tried_again() -> None:
    d = FakeDelivery(task("picky"))
    run(d)
    assert d.said[0] == (
        "reply",
        {"ok": False, "error": {"code": "BAD_REQUEST", "message": "wants a thing"}},
    )
    assert d.said[1][0] == "dead" and d.said[1][1][3] == 1


@pytest.mark.parametrize(
    ("body", "user", "code"),
    [
        (task("nosuch"), None, "NOT_FOUND"),
        (b"[1]", None, "BAD_REQUEST"),
        (task("add", a=1, b=1), "stranger", "UNAUTHORIZED"),
    ],
)
def test_refusals_are_answered_or_dead_lettered_never_retried(
    body: bytes, user: str | None, code: str
) -> None:
    d = FakeDelivery(body, user=user)
    run(d)
    assert [k for k, _ in d.said] == ["reply", "ack"] and d.said[0][1]["error"]["code"] == code
    d = FakeDelivery(body, user=user, reply_to=None)
    r = run(d)
    assert [k for k, _ in d.said] == ["dead", "ack"] and d.said[0][1][0].startswith(code)
    assert r.counts.failed == 1


def test_nothing_is_acked_on_a_lost_connection() -> None:
    d = FakeDelivery(task("add", a=1, b=2), broken=True)
    r = run(d)
    assert d.said == [] and r.counts.running == 0
