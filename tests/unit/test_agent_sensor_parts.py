"""The sensor's parts without a broker: variety, values that fit in state, a file's tail, a
command's output, and the agent itself on a stand-in context (numbering, health, restarts)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from vsmd.agents.sensor import RECENT_BUDGET, SensorAgent
from vsmd.agents.sensor_sources import (
    CommandSource,
    FileTail,
    SourceError,
    SystemSource,
    fit,
    parse_text,
)
from vsmd.agents.variety import Variety, quantize, state_key
from vsmd.errors import Unauthorized
from vsmd.mcp.registry import Caller, McpGrant, McpRegistry


def test_variety_counts_distinct_states_in_a_window() -> None:
    v = Variety(window=3)
    assert [v.observe(x) for x in (1, 1, 2, 3, 3, 3)] == [1, 1, 2, 3, 2, 1]
    coarse = Variety(window=10, resolution=5.0)
    assert [coarse.observe(x) for x in (20.1, 21.9, 23.0, 40)] == [1, 1, 2, 3]
    assert quantize({"a": [1.26, True, "x", None]}, 0.5) == {"a": [3, True, "x", None]}
    assert state_key({"a": 1, "b": 2}, None) == state_key({"b": 2, "a": 1}, None)
    assert quantize(float("nan"), 1.0) == "nan"


def test_values_are_parsed_and_fit_in_state() -> None:
    assert parse_text(' {"t": 21.5}\n') == {"t": 21.5}
    assert parse_text("42\n") == 42
    assert parse_text("load is high") == "load is high"
    assert fit({"a": 1}, 100) == ({"a": 1}, False)
    cut, truncated = fit("é" * 100, 11)
    assert truncated and cut == "é" * 5  # never half a character
    assert fit({"k": "v" * 50}, 20) == ('{"k":"vvvvvvvvvvvvvv', True)


def test_a_file_is_tailed_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("old 1\nold 2\n")
    tail = FileTail(str(path), 1024)
    assert asyncio.run(tail.sample()) == []  # there at the start: read from its end
    with path.open("a") as f:
        f.write('new\n{"n": 2}\n\npart')
    assert asyncio.run(tail.sample()) == ["new", {"n": 2}]
    with path.open("a") as f:
        f.write("ial\n")
    assert asyncio.run(tail.sample()) == ["partial"]
    path.write_text("rotated\n")  # shorter: truncated or replaced, read from the start
    assert asyncio.run(tail.sample()) == ["rotated"]
    path.unlink()
    with pytest.raises(SourceError, match=r"cannot read .*No such file"):
        asyncio.run(tail.sample())
    path.write_text("back\n")
    assert asyncio.run(tail.sample()) == ["back"]


def test_a_file_that_is_not_there_at_first_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "later"
    tail = FileTail(str(path), 1024)
    with pytest.raises(SourceError):
        asyncio.run(tail.sample())
    path.write_text("1\n2\n")
    assert asyncio.run(tail.sample()) == [1, 2]


def test_a_command_is_run_without_a_shell_with_a_timeout() -> None:
    py = sys.executable
    ok = CommandSource([py, "-c", "print('{\"up\": 1}'); print('$HOME')"], 10, 1024)
    assert asyncio.run(ok.sample()) == ['{"up": 1}\n$HOME']  # two lines: text; no expansion
    js = CommandSource([py, "-c", "print('{\"up\": 1}')"], 10, 1024)
    assert asyncio.run(js.sample()) == [{"up": 1}]
    bad = CommandSource([py, "-c", "import sys; sys.exit('disk gone')"], 10, 1024)
    with pytest.raises(SourceError, match="exited with 1: disk gone"):
        asyncio.run(bad.sample())
    # A command that never ends by itself: only the source's timeout stops it.
    slow = CommandSource([py, "-c", "import threading; threading.Event().wait()"], 0.3, 1024)
    with pytest.raises(SourceError, match=r"did not finish within 0\.3 s"):
        asyncio.run(slow.sample())
    with pytest.raises(SourceError, match="cannot run /no/such/tool"):
        asyncio.run(CommandSource(["/no/such/tool"], 1, 1024).sample())
    chatty = CommandSource([py, "-c", "print('x' * 100000)"], 10, 50)
    [out] = asyncio.run(chatty.sample())
    assert isinstance(out, str) and len(out) == 51  # kept a little more, for fit() to cut


def test_system_metrics() -> None:
    [value] = asyncio.run(SystemSource(["memory_percent", "processes"]).sample())
    assert set(value) == {"memory_percent", "processes"} and value["processes"] >= 1


class FakeState:
    """What ``ctx.state`` does for the agent, minus the replication."""

    def __init__(self, data: dict[str, Any] | None = None, caps: frozenset[str] | None = None):
        self.d: dict[str, Any] = dict(data or {})
        self.metrics: dict[str, Any] = {}
        self.caps = caps if caps is not None else frozenset({"state", "metrics"})

    def _need(self, cap: str) -> None:
        if cap not in self.caps:
            raise Unauthorized(f"not granted {cap}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.d.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._need("state")
        self.d[key] = value

    def delete(self, key: str) -> None:
        self._need("state")
        self.d.pop(key, None)

    def count(self, name: str, n: int = 1) -> None:
        self._need("metrics")
        self.metrics[f"c.{name}"] = self.metrics.get(f"c.{name}", 0) + n

    def health(self, status: str) -> None:
        self._need("metrics")
        self.metrics["health"] = status


class FakeCtx:
    def __init__(self, state: FakeState, caps: frozenset[str]) -> None:
        self.path = "plant.sensor"
        self.state = state
        self.capabilities = caps
        self.registry = McpRegistry()
        self.mcp = McpGrant(self.registry, "mcp" in caps, self.path)


def run_sensor(config: dict[str, Any], ctx: FakeCtx, samples: int) -> SensorAgent:
    async def go() -> SensorAgent:
        agent = SensorAgent(config)
        await agent.start(ctx)  # type: ignore[arg-type]
        if agent._task is not None:  # the loop is driven by hand here: no timing
            agent._task.cancel()
        for _ in range(samples):
            await agent._sample()
        await agent.stop(ctx)  # type: ignore[arg-type]
        return agent

    return asyncio.run(go())


ALL = frozenset({"state", "metrics", "mcp", "http"})


def test_readings_are_numbered_and_a_failing_source_is_health(tmp_path: Path) -> None:
    path = tmp_path / "v"
    # Prints the file, or fails with its text when it starts with "!".
    script = (
        f"import sys; v = open({str(path)!r}).read(); sys.exit(v[1:]) if v[0] == '!' else print(v)"
    )
    cfg = {"source": {"command": [sys.executable, "-c", script]}, "keep": 3, "failing_after": 2}
    state = FakeState()
    ctx = FakeCtx(state, ALL)
    for value in ("1", "2", "2", "3"):
        path.write_text(value)
        run_sensor(cfg, ctx, 1)
    assert state.d["reading"]["seq"] == 4 and state.d["reading"]["value"] == 3
    assert [r["seq"] for r in state.d["recent"]] == [2, 3, 4]  # restarts go on numbering
    assert state.metrics["c.readings"] == 4 and state.metrics["health"] == "ok"
    assert state.d["sensor"] == {
        "source": "command",
        "target": CommandSource([sys.executable, "-c", script], 1, 1).target,
        "period": 5.0,
    }
    path.write_text("!no disk")
    agent = run_sensor(cfg, ctx, 1)
    assert state.metrics["health"] == "degraded" and "no disk" in state.d["error"]["message"]
    assert agent.latest()["error"]["consecutive"] == 1
    agent = run_sensor(cfg, ctx, 2)
    assert state.metrics["health"] == "failing" and state.d["error"]["consecutive"] == 2
    assert state.metrics["c.sensor_errors"] == 3
    path.write_text("4")
    run_sensor(cfg, ctx, 1)
    assert state.metrics["health"] == "ok" and "error" not in state.d
    assert state.d["reading"]["seq"] == 5


def test_variety_is_a_counter_that_follows_the_window(tmp_path: Path) -> None:
    path = tmp_path / "v"
    path.write_text("")
    cfg = {"source": {"file": str(path)}, "window": 3}
    state = FakeState()
    ctx = FakeCtx(state, ALL)
    agent = SensorAgent(cfg)

    async def feed(lines: str) -> None:
        with path.open("a") as f:
            f.write(lines)
        await agent._sample()

    async def go() -> None:
        await agent.start(ctx)  # type: ignore[arg-type]
        assert agent._task is not None
        agent._task.cancel()
        await agent._sample()
        await feed("a\nb\nc\n")
        assert state.metrics["c.variety"] == 3
        await feed("c\nc\n")
        assert state.metrics["c.variety"] == 1 and state.d["variety"]["distinct"] == 1
        await agent.stop(ctx)  # type: ignore[arg-type]

    asyncio.run(go())
    assert state.metrics["c.readings"] == 5


def test_the_read_tool_and_an_http_source_without_the_grant(tmp_path: Path) -> None:
    state = FakeState()
    ctx = FakeCtx(state, frozenset({"state", "metrics", "mcp"}))
    agent = run_sensor({"source": {"http": "http://127.0.0.1:9/x"}}, ctx, 0)
    assert agent._task is None  # no loop: it will never be allowed to read
    assert state.metrics["health"] == "failing"
    assert "not granted the http capability" in state.d["error"]["message"]
    tool = ctx.registry.tools["read"]
    assert tool.read_only
    got = asyncio.run(tool.handler({"last": 1}, Caller("vsmctl", "", "read")))
    assert got["seq"] == 0 and got["health"] == "failing" and got["recent"] == []


def test_a_grant_without_state_or_mcp_is_no_crash(tmp_path: Path) -> None:
    state = FakeState(caps=frozenset())
    ctx = FakeCtx(state, frozenset())
    agent = run_sensor({"source": {"command": [sys.executable, "-c", "print(1)"]}}, ctx, 2)
    assert agent.seq == 2 and state.d == {} and not ctx.registry.tools


def test_recent_stays_within_its_budget() -> None:
    agent = SensorAgent({"keep": 100, "max_bytes": 8192})
    agent._out = None
    for i in range(100):
        agent.recent.append({"seq": i, "value": "x" * 8000})
    kept = agent._recent_within_budget()
    assert kept[-1]["seq"] == 99 and 2 <= len(kept) < 100
    assert len(orjson.dumps(kept)) <= RECENT_BUDGET
