"""The sensor and api agent types in a real daemon, on the real broker, against HTTP servers the
test runs on 127.0.0.1: readings reach the parent in order, a failing source is health and no
crash, bad settings are refused before a fork; the api agent retries, times out, opens its
circuit and closes it again, refuses hosts off its allow-list and limits each caller."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmd.errors import Throttled, Timeout, Unauthorized
from vsmd.protocol import SpawnConfig

MODULES = ["tests.support.agents", "tests.support.msg_agents"]


class Upstream:
    """An HTTP server whose failures the test turns on and off.

    ``/slow`` answers only when released (or after 10 s); ``/big`` is 100 kB; anything else
    is ``{"n": <requests so far>}`` as JSON, or a 503 while ``fail_next`` counts down, or a
    500 while ``broken``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: list[str] = []
        self.fail_next = 0
        self.broken = False
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.serve(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream.serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def serve(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.hits.append(h.path)
            n = len(self.hits)
            status = 200
            if self.broken:
                status = 500
            elif self.fail_next > 0:
                self.fail_next -= 1
                status = 503
        if h.path == "/slow":
            self.release.wait(10)
        body = b"x" * 100_000 if h.path == "/big" else orjson.dumps({"n": n})
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits.count(path)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def d(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    state = tmp_path_factory.mktemp("sensor-api") / "state"
    with running_daemon(broker_url, state, config={"agent_modules": MODULES}) as daemon:
        yield daemon


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        up.close()


def spawn(d: DaemonProc, agent: str, settings: dict[str, Any], parent: str | None = None) -> str:
    c = d.client()
    return c.spawn_recursive_vsm(parent, SpawnConfig(agent=agent, settings=settings)).id


def data_of(d: DaemonProc, vsm_id: str) -> dict[str, Any]:
    state: dict[str, Any] = d.client().state(vsm_id)
    return state


# --- sensor --------------------------------------------------------------------------------


def test_readings_reach_the_parent_in_order(d: DaemonProc, tmp_path: Path) -> None:
    c = d.client()
    parent = spawn(d, "recorder", {})
    feed = tmp_path / "feed"
    feed.write_text("")
    # A command that prints a file: what it reads, and so the variety, is up to the test.
    cmd = [sys.executable, "-c", f"print(open({str(feed)!r}).read() or 0)"]
    settings = {"source": {"command": cmd}, "period": 0.1, "keep": 5, "window": 1000}
    sensor = spawn(d, "sensor", settings, parent)
    seen: list[int] = []

    def parent_sees(enough: int) -> dict[str, Any] | None:
        shown = c.call(parent, "do", {"op": "state_show"})["result"]["children"].get(sensor)
        reading = ((shown or {}).get("data") or {}).get("reading")
        if reading is None:
            return None
        seen.append(reading["seq"])
        recent = [r["seq"] for r in shown["data"]["recent"]]
        assert recent == list(range(recent[0], recent[0] + len(recent))), recent
        assert recent[-1] == reading["seq"]
        return shown if reading["seq"] >= enough else None

    poll_for(lambda: parent_sees(5), 20, 0.1, "five readings in the parent's replica")

    def parent_reads(value: int) -> bool:
        shown = parent_sees(0)
        return shown is not None and shown["data"]["reading"]["value"] == value

    for value in (1, 2, 3):
        feed.write_text(str(value))
        poll_for(functools.partial(parent_reads, value), 10, 0.05, f"the parent to see {value}")
    assert seen == sorted(seen), seen  # never back
    shown = parent_sees(0)
    assert shown is not None and shown["metrics"]["health"] == "ok"
    assert shown["data"]["variety"]["distinct"] == 4  # 0, 1, 2, 3 in the window

    def summary() -> dict[str, Any] | None:
        sub = c.state(parent)["metrics"].get("subtree") or {}
        counters = sub.get("counters") or {}
        return sub if counters.get("readings", 0) >= 8 and counters.get("variety") == 4 else None

    sub = poll_for(summary, 10, 0.1, "readings and variety in the parent's subtree summary")
    assert sub["count"] == 2 and sub["worst_health"] == "ok"
    read = d.vsmctl("call", sensor, "read", "--arg", "last=2", "--json")
    assert read.returncode == 0, read.stderr
    got = orjson.loads(read.stdout)
    assert [r["seq"] for r in got["recent"]] == [got["seq"] - 1, got["seq"]]
    assert got["source"]["kind"] == "command" and got["variety"] == 4


def test_a_failing_source_is_health_not_a_crash(d: DaemonProc, upstream: Upstream) -> None:
    c = d.client()
    settings = {"source": {"http": f"{upstream.base}/n"}, "period": 0.1, "failing_after": 3}
    # Top level: a parent would have to hold http for the sensor to get it.
    sensor = spawn(d, "sensor", {**settings, "timeout": 2})
    pid = c.show(sensor).pid

    def reading() -> dict[str, Any] | None:
        got: dict[str, Any] | None = data_of(d, sensor)["data"].get("reading")
        return got

    first = poll_for(reading, 10, 0.05, "a reading over HTTP")
    assert isinstance(first["value"], dict) and "n" in first["value"]  # the JSON body, parsed
    upstream.broken = True

    def failing() -> dict[str, Any] | None:
        state = data_of(d, sensor)
        return state if state["metrics"].get("health") == "failing" else None

    state = poll_for(failing, 10, 0.05, "the sensor to say failing")
    assert state["data"]["error"]["consecutive"] >= 3  # degraded for the first two
    assert "answered HTTP 500" in state["data"]["error"]["message"]
    assert state["metrics"]["subtree"]["worst_health"] == "failing"
    info = c.show(sensor)
    assert info.pid == pid and info.status == "running" and info.restarts == 0
    upstream.broken = False

    def healed() -> dict[str, Any] | None:
        state = data_of(d, sensor)
        return state if state["metrics"].get("health") == "ok" else None

    state = poll_for(healed, 10, 0.05, "the sensor to be ok again")
    assert "error" not in state["data"] and state["data"]["reading"]["seq"] > first["seq"]
    assert state["metrics"]["c.sensor_errors"] >= 3
    assert c.show(sensor).pid == pid


def test_bad_settings_are_refused_before_any_fork(d: DaemonProc) -> None:
    c = d.client()
    before = {v.id for v in c.list_child_vsms()}
    bad = d.vsmctl("spawn", "--agent", "sensor", "--set", "period=-1")
    assert bad.returncode == 1 and bad.stderr.startswith("vsmctl: INVALID_CONFIG: "), bad.stderr
    assert "period: -1 is less than or equal to the minimum of 0" in bad.stderr
    bad = d.vsmctl("spawn", "--agent", "sensor", "--set", 'source={"http": "ftp://x"}')
    assert "source.http: 'ftp://x' does not match" in bad.stderr, bad.stderr
    bad = d.vsmctl("spawn", "--agent", "api", "--set", "retries=-1")
    assert "'allow' is a required property" in bad.stderr, bad.stderr
    assert "retries: -1 is less than the minimum of 0" in bad.stderr
    assert {v.id for v in c.list_child_vsms()} == before


# --- api -----------------------------------------------------------------------------------


def test_api_retries_times_out_and_keeps_to_its_allow_list(
    d: DaemonProc, upstream: Upstream
) -> None:
    c = d.client()
    allow = [f"127.0.0.1:{upstream.port}"]
    api = spawn(
        d,
        "api",
        {"allow": allow, "retries": 2, "backoff": 0.05, "timeout": 2, "max_body": 1000},
    )
    upstream.fail_next = 2
    got = c.call(api, "call", {"url": f"{upstream.base}/a"})
    assert got["status"] == 200 and got["attempts"] == 3 and got["json"] == {"n": 3}
    assert upstream.count("/a") == 3
    upstream.fail_next = 1  # a POST is not sent twice: the server may have acted on it
    got = c.call(api, "call", {"url": f"{upstream.base}/p", "method": "POST", "json": {"x": 1}})
    assert got["status"] == 503 and got["attempts"] == 1
    big = c.call(api, "call", {"url": f"{upstream.base}/big"})
    assert big["truncated"] and len(big["body"]) == 1000 and "json" not in big
    with pytest.raises(Timeout, match=r"no answer from http://127\.0\.0\.1:\d+ within 0\.3 s"):
        c.call(api, "call", {"url": f"{upstream.base}/slow", "timeout": 0.3})
    assert upstream.count("/slow") == 3  # a GET that timed out is tried again
    hits = len(upstream.hits)
    for url in (f"http://localhost:{upstream.port}/a", "http://127.0.0.1:1/a"):
        with pytest.raises(Unauthorized, match="is not on the allow-list"):
            c.call(api, "call", {"url": url})
    assert len(upstream.hits) == hits  # refused before any connection
    state = data_of(d, api)
    assert state["data"]["last_call"]["error"].startswith("TIMEOUT: ")
    assert state["metrics"]["c.api_refused"] == 2 and state["metrics"]["c.api_retries"] >= 4
    assert state["data"]["circuit"]["state"] == "closed"


def test_api_circuit_opens_refuses_and_closes_again(d: DaemonProc, upstream: Upstream) -> None:
    c = d.client()
    api = spawn(
        d,
        "api",
        {
            "allow": ["127.0.0.1"],
            "retries": 0,
            "failure_threshold": 2,
            "cooldown": 2.0,  # the refusal below must come within it, on a slow machine too
            "timeout": 2,
        },
    )
    url = f"{upstream.base}/c"
    upstream.broken = True
    assert [c.call(api, "call", {"url": url})["status"] for _ in range(2)] == [500, 500]

    def circuit(want: str) -> dict[str, Any] | None:
        state = data_of(d, api)
        return state if state["data"]["circuit"]["state"] == want else None

    state = circuit("open") or poll_for(lambda: circuit("open"), 5, 0.05, "an open circuit")
    assert state["metrics"]["health"] == "failing" and state["data"]["circuit"]["failures"] == 2
    assert state["data"]["circuit"]["opened_at"] > 0
    with pytest.raises(Throttled, match="circuit open after 2 failed calls") as refused:
        c.call(api, "call", {"url": url})
    assert refused.value.details["limit"] == "circuit" and 0 < refused.value.retry_after <= 2
    assert upstream.count("/c") == 2  # refused calls never reach the server
    upstream.broken = False
    state = poll_for(lambda: circuit("half_open"), 5, 0.05, "the circuit to half-open")
    assert state["metrics"]["health"] == "degraded"
    res = d.vsmctl("call", api, "call", "--arg", f"url={url}", "--json")  # the MCP tool
    assert res.returncode == 0, res.stderr
    assert orjson.loads(res.stdout)["status"] == 200
    state = poll_for(lambda: circuit("closed"), 5, 0.05, "the circuit to close")
    assert state["metrics"]["health"] == "ok" and state["data"]["circuit"]["failures"] == 0


def test_api_limits_each_caller(d: DaemonProc, upstream: Upstream) -> None:
    c = d.client()
    api = spawn(d, "api", {"allow": ["127.0.0.1"], "rate": 0.2, "burst": 2})
    args = {"url": f"{upstream.base}/r"}
    assert [c.call(api, "call", args)["status"] for _ in range(2)] == [200, 200]
    with pytest.raises(Throttled, match="over its rate") as refused:
        c.call(api, "call", args)
    assert refused.value.details["caller"] == "vsmctl" and refused.value.retry_after > 1
    other = spawn(d, "recorder", {})  # another caller has a bucket of its own
    got = c.call(other, "do", {"op": "request", "target": api, "kind": "call", "body": args})
    assert got["result"]["status"] == 200, got
    assert upstream.count("/r") == 3
