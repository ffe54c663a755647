"""The worker agent type against a real daemon, real VSM processes and the real broker.

Tasks come from tests/support/task_funcs.py. Where the test must count what reaches the
submitter, it submits by hand (``Submitter``): one channel that publishes tasks and collects
every reply by correlation id, so a result delivered twice would be seen twice.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pika
import pytest

from tests.support.harness import DaemonProc, poll_for, queue_exists, run_tool, running_daemon
from tests.support.tcp_proxy import TcpProxy
from vsmctl.client import VsmClient
from vsmctl.tasks import TaskSubmitter
from vsmd.errors import AgentError, NotFound, ProtocolError, Timeout, Unreachable
from vsmd.protocol import Policy, SpawnConfig, VsmInfo
from vsmd.tasks.message import STATUS_CALL, TaskRequest

TASKS = {"tasks_modules": ["tests.support.task_funcs"]}


class Submitter:
    """Tasks onto a queue by hand; every reply kept, by correlation id."""

    def __init__(self, broker_url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, _ch: Any, _m: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.replies.setdefault(props.correlation_id, []).append(orjson.loads(body))

    def submit(self, queue: str, task: str, args: dict[str, Any]) -> str:
        req = TaskRequest(task, args, "vsmctl")
        props = pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=req.id, delivery_mode=2
        )
        self.ch.basic_publish("", queue, req.encode(), props, mandatory=True)
        return req.id

    def results(self, corrs: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first reply to each of ``corrs``, once all came."""

        def arrived() -> bool:
            self.conn.process_data_events(time_limit=0.05)
            return all(c in self.replies for c in corrs)

        poll_for(arrived, timeout, 0.0, "the tasks' results")
        return [self.replies[c][0] for c in corrs]

    def ready(self, queue: str) -> int:
        """Messages waiting in ``queue`` that no consumer holds."""
        ch = self.conn.channel()
        count = int(ch.queue_declare(queue, passive=True).method.message_count)
        ch.close()
        return count

    def dead_letters(self, dead_queue: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(headers, body) of everything on the dead-letter queue, taken off it."""
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        while True:
            method, props, body = self.ch.basic_get(dead_queue, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), orjson.loads(body)))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def daemon(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with running_daemon(broker_url, tmp_path_factory.mktemp("worker")) as d:
        try:
            yield d
        finally:
            # Terminated, not left to the daemon's stop: that keeps task queues for a restart.
            c = d.client()
            for v in c.list_child_vsms(None, recursive=False):
                c.terminate_child_vsm(v.id)


@pytest.fixture
def sub(broker_url: str) -> Iterator[Submitter]:
    s = Submitter(broker_url)
    yield s
    s.close()


@pytest.fixture
def made(broker_url: str) -> Iterator[list[str]]:
    """The task queues of the workers a test spawned: deleted after it even when it failed
    before it terminated them (the daemon's stop keeps them; the harness does not know them)."""
    queues: list[str] = []
    yield queues
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    for q in queues:
        ch.queue_delete(q)
    conn.close()


def spawn_worker(
    c: VsmClient, made: list[str], name: str, policy: Policy | None = None, **settings: Any
) -> VsmInfo:
    config = SpawnConfig(name=name, agent="worker", settings={**TASKS, **settings})
    if policy is not None:
        config = SpawnConfig(config.name, config.agent, config.settings, policy)
    info = c.spawn_recursive_vsm(None, config)
    made.append(c.topo.task_queue(info.id))
    # A spawn returns once the VSM is ready, before its agent's start declared the queue; a
    # call is answered after the start (TaskSubmitter does the same when its publish bounces).
    assert c.call(info.id, STATUS_CALL)["queue"] == c.topo.task_queue(info.id)
    return info


def _status(c: VsmClient, vsm_id: str) -> dict[str, Any]:
    """The worker's status, or nothing while it reconnects: no inbox, or a call that went into
    the inbox of the connection the broker had not yet dropped (inboxes are at most once)."""
    try:
        status: dict[str, Any] = c.call(vsm_id, STATUS_CALL, timeout=2.0)
    except (Unreachable, Timeout):
        return {}
    return status


def counters(c: VsmClient, vsm_id: str) -> dict[str, Any]:
    metrics: dict[str, Any] = c.state(vsm_id)["metrics"]
    return metrics


def test_submit_and_wait_from_python_vsmctl_and_mcp(
    daemon: DaemonProc, broker_url: str, made: list[str]
) -> None:
    c = daemon.client()
    w = spawn_worker(c, made, "calc", concurrency=2)
    tasks = TaskSubmitter(c)
    assert tasks.submit(w.id, "add", {"a": 1, "b": 2}, wait=True) == {"sum": 3}
    assert tasks.submit(w.id, "shout", {"text": "hi"}, wait=True) == "HI"  # an async task
    queued = tasks.submit(w.id, "add", {"a": 1, "b": 1})
    assert queued["queue"] == f"{daemon.namespace}.tasks.{w.id}" and queued["submitted"]

    res = daemon.vsmctl("submit", w.id, "add", "--arg", "a=2", "--arg", "b=5", "--wait", "--json")
    assert res.returncode == 0 and orjson.loads(res.stdout) == {"sum": 7}, res.stderr
    res = daemon.vsmctl("submit", w.id, "add", "--arg", "a=2", "--arg", "b=5")
    assert res.returncode == 0 and res.stdout.startswith(f"submitted add to {w.id} (task "), res
    res = daemon.vsmctl("submit", w.id, "add", "--arg", "a=1", "--arg", "b=1", "--json")
    assert res.returncode == 0 and orjson.loads(res.stdout)["task"] == "add", res.stderr
    res = daemon.vsmctl("submit", w.id, "nosuch", "--wait")
    assert res.returncode == 1 and "NOT_FOUND: unknown task 'nosuch'" in res.stderr, res.stderr
    res = daemon.vsmctl("submit", w.id, "bad name!", "--wait")
    assert res.returncode == 1 and "BAD_REQUEST: bad task name" in res.stderr, res.stderr
    # The MCP tool, run by the worker through its own queue.
    res = daemon.vsmctl(
        "call", w.id, "submit_task", "--arg", "task=add", "--arg", 'args={"a": 4, "b": 4}', "--json"
    )
    assert res.returncode == 0 and orjson.loads(res.stdout) == {"sum": 8}, res.stderr

    # A VSM that is no worker, and one that does not exist.
    noop = c.spawn_recursive_vsm(None, SpawnConfig(name="plain"))
    with pytest.raises(NotFound, match="takes no tasks"):
        tasks.submit(noop.id, "add", {"a": 1, "b": 1})
    with pytest.raises(NotFound):
        tasks.submit("0123456789ab", "add", {})

    # Counters in its state, for its parents' subtree summaries (written once a tick).
    poll_for(lambda: counters(c, w.id).get("c.tasks_done") == 7, what="tasks_done 7")
    assert counters(c, w.id).get("c.tasks_failed") == 1  # the unknown task
    queue = c.topo.task_queue(w.id)
    assert queue_exists(broker_url, queue)
    c.terminate_child_vsm(w.id)
    assert not queue_exists(broker_url, queue)  # removed with its worker
    c.terminate_child_vsm(noop.id)


def test_kill_mid_task_redoes_it_once(
    daemon: DaemonProc, sub: Submitter, tmp_path: Path, made: list[str]
) -> None:
    c = daemon.client()
    w = spawn_worker(c, made, "sturdy", Policy(restart="permanent"), concurrency=1)
    queue = c.topo.task_queue(w.id)
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    first = sub.submit(queue, "block", {"started": str(started), "release": str(release)})
    poll_for(lambda: len(list(started.iterdir())) == 1, what="the task to start")
    assert w.pid is not None
    os.kill(w.pid, signal.SIGKILL)

    def restarted() -> bool:
        info = c.show(w.id)
        return info.status == "running" and info.pid not in (None, w.pid)

    poll_for(restarted, 30, 0.1, "the worker to be restarted")
    poll_for(lambda: len(list(started.iterdir())) == 2, what="the restarted worker to redo it")
    release.touch()
    # With one task at a time, in order: once a later task's result is here, a second result
    # of the first would have come before it.
    later = sub.submit(queue, "add", {"a": 1, "b": 1})
    redone, added = sub.results([first, later])
    assert redone == {"ok": True, "result": {"pid": c.show(w.id).pid, "attempts_seen": 2}}
    assert added == {"ok": True, "result": {"sum": 2}}
    assert len(sub.replies[first]) == 1
    assert len(list(started.iterdir())) == 2
    c.terminate_child_vsm(w.id)


def test_poison_task_is_dead_lettered_with_its_error(
    daemon: DaemonProc, sub: Submitter, made: list[str]
) -> None:
    c = daemon.client()
    w = spawn_worker(c, made, "fragile", max_attempts=2)
    queue = c.topo.task_queue(w.id)
    sub.dead_letters(c.topo.dead_queue)  # whatever an earlier test left there
    tasks = TaskSubmitter(c)
    with pytest.raises(AgentError, match=r"failed after 2 attempt\(s\): RuntimeError: boom"):
        tasks.submit(w.id, "boom", {}, wait=True)
    # A task that calls its input bad is not tried again.
    with pytest.raises(ProtocolError, match="picky: wants a 'thing'"):
        tasks.submit(w.id, "picky", {}, wait=True)
    # Nobody waits for this one: the dead-letter queue is where its error is.
    sub.ch.basic_publish("", queue, TaskRequest("boom", {"n": 3}, "vsmctl").encode())
    dead: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def three() -> bool:
        dead.extend(sub.dead_letters(c.topo.dead_queue))
        return len(dead) == 3

    poll_for(three, what="three dead letters")
    by_args = {orjson.dumps(body["body"]["args"]).decode(): h for h, body in dead}
    loud = by_args['{"n":3}']
    assert loud["x-task"] == "boom" and loud["x-attempts"] == 2 and loud["x-vsm"] == w.id
    assert loud["x-error"] == "RuntimeError: boom"
    assert loud["x-reason"].startswith("AGENT_ERROR: task 'boom' failed after 2 attempt(s)")
    assert by_args["{}"]["x-task"] in ("boom", "picky")
    picky = [h for h, _ in dead if h["x-task"] == "picky"]
    assert picky and picky[0]["x-attempts"] == 1 and picky[0]["x-reason"].startswith("BAD_REQUEST")
    poll_for(lambda: counters(c, w.id).get("c.tasks_failed") == 3, what="tasks_failed 3")
    c.terminate_child_vsm(w.id)


def test_concurrency_is_bounded(
    daemon: DaemonProc, sub: Submitter, tmp_path: Path, made: list[str]
) -> None:
    c = daemon.client()
    w = spawn_worker(c, made, "pair", concurrency=2)
    queue = c.topo.task_queue(w.id)
    running, release = tmp_path / "running", tmp_path / "release"
    running.mkdir()
    args = {"running": str(running), "release": str(release)}
    corrs = [sub.submit(queue, "overlap", args) for _ in range(6)]
    # Two run; the broker holds the other four back (the prefetch is the concurrency).
    poll_for(
        lambda: len(list(running.iterdir())) == 2 and sub.ready(queue) == 4,
        what="two running and four waiting",
    )
    assert c.call(w.id, "worker_status")["running"] == 2
    release.touch()
    most = [r["result"]["most"] for r in sub.results(corrs)]
    assert max(most) == 2, most
    c.terminate_child_vsm(w.id)


def test_bad_settings_are_refused_before_any_fork(daemon: DaemonProc) -> None:
    c = daemon.client()
    before = c.list_child_vsms()
    res = daemon.vsmctl(
        "spawn", "--agent", "worker", "--set", "concurrency=0", "--set", "max_attempts=lots"
    )
    assert res.returncode == 1 and res.stderr.startswith("vsmctl: INVALID_CONFIG: "), res.stderr
    assert "concurrency: 0 is less than the minimum of 1" in res.stderr
    assert "max_attempts: 'lots' is not of type 'integer'" in res.stderr
    res = daemon.vsmctl("spawn", "--agent", "worker", "--set", 'tasks_modules=["no such"]')
    assert res.returncode == 1 and "INVALID_CONFIG" in res.stderr, res.stderr
    assert c.list_child_vsms() == before
    # What only the worker can tell (a task it was told to serve that no module registers)
    # fails its start.
    res = daemon.vsmctl(
        "spawn",
        "--agent",
        "worker",
        "--set",
        'tasks_modules=["tests.support.task_funcs"]',
        "--set",
        'tasks=["nosuch"]',
    )
    assert res.returncode == 1 and "SPAWN_FAILED" in res.stderr, res.stderr
    assert "no such tasks: nosuch" in daemon.log()


def test_a_stop_keeps_the_queue_and_namespace_remove_takes_it(
    broker_url: str, tmp_path: Path, made: list[str]
) -> None:
    state = tmp_path / "state"
    with running_daemon(broker_url, state) as d:
        c = d.client()
        w = spawn_worker(c, made, "kept")
        queue = c.topo.task_queue(w.id)
        TaskSubmitter(c).submit(w.id, "add", {"a": 1, "b": 1})
        assert d.stop() == 0
        # The journal brings the worker back at the next start: its tasks wait for it.
        assert queue_exists(broker_url, queue)
        res = run_tool(
            "vsmd",
            "namespace",
            "remove",
            d.namespace,
            "--state-dir",
            str(state),
            namespace=d.namespace,
            broker_url=broker_url,
        )
        assert res.returncode == 0 and queue in res.stdout, (res.stdout, res.stderr)
        assert not queue_exists(broker_url, queue)


def test_a_lost_connection_hands_the_task_out_again_to_the_same_process(
    broker_url: str, tmp_path: Path, sub: Submitter, made: list[str]
) -> None:
    """The broker requeues what the worker held when its connection dropped; the worker
    consumes its queue again after its reconnect and runs the task once more (as an attempt)."""
    with (
        TcpProxy(broker_url) as proxy,
        running_daemon(proxy.url, tmp_path / "state", None, {"probe_interval": 0}) as d,
    ):
        c = d.client()
        w = spawn_worker(c, made, "cut", concurrency=1)
        assert w.pid is not None
        queue = c.topo.task_queue(w.id)
        started, release = tmp_path / "started", tmp_path / "release"
        started.mkdir()
        first = sub.submit(queue, "block", {"started": str(started), "release": str(release)})
        poll_for(lambda: len(list(started.iterdir())) == 1, what="the task to start")
        assert proxy.cut(w.pid) == 1  # its one connection
        proxy.heal(w.pid)
        # Back on the broker, it got the task again and put it back with the attempt counted.
        poll_for(lambda: _status(c, w.id).get("retried") == 1, what="the redelivery")
        # The first attempt still holds the one thread (a plain task cannot be stopped): once
        # it ends, its result goes nowhere, and the task runs again.
        release.touch()
        poll_for(lambda: len(list(started.iterdir())) == 2, what="the task to run again")
        later = sub.submit(queue, "add", {"a": 2, "b": 3})
        again, added = sub.results([first, later])
        assert again == {"ok": True, "result": {"pid": w.pid, "attempts_seen": 2}}
        assert added == {"ok": True, "result": {"sum": 5}}
        assert len(sub.replies[first]) == 1
        c.terminate_child_vsm(w.id)
