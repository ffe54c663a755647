"""Agent types against a real daemon: settings refused before anything is forked (from vsmctl,
from a VSM over MCP), `vsmctl agents`, and a type that an installed package adds through the
`vsmd.agents` entry points, spawned without naming any module in the config."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.harness import running_daemon
from vsmd.protocol import SpawnConfig

PACKAGE = {
    "hello_agents.py": (
        "from vsmd.agents import AsyncAgent\n"
        "class Hello(AsyncAgent):\n"
        "    '''Answers hello.'''\n"
        "    config_schema = {'type': 'object', 'properties': {'who': {'type': 'string'}},\n"
        "                     'required': ['who'], 'additionalProperties': False}\n"
        "    async def handle(self, ctx, kind, body, sender):\n"
        "        return {'hello': self.config['who']}\n"
    ),
    "hello_agents-1.0.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: hello-agents\nVersion: 1.0\n"
    ),
    "hello_agents-1.0.dist-info/entry_points.txt": "[vsmd.agents]\nhello = hello_agents:Hello\n",
}


def test_types_settings_and_entry_points(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    for name, text in PACKAGE.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(site))  # as if pip had installed it
    with running_daemon(broker_url, tmp_path / "state") as d:
        listed = orjson.loads(d.vsmctl("agents", "--json").stdout)
        by_name = {t["name"]: t for t in listed}
        assert {"noop", "tree", "reading", "hello"} <= set(by_name)
        assert by_name["hello"]["config_schema"]["required"] == ["who"]
        assert by_name["tree"]["config_schema"]["properties"]["fanout"]["type"] == "integer"
        text = d.vsmctl("agents").stdout
        assert "hello: Answers hello." in text and "    who (string) required" in text

        bad = d.vsmctl("spawn", "--agent", "tree", "--set", "fanout=lots", "--set", "depth=2")
        assert bad.returncode == 1 and bad.stderr.startswith("vsmctl: INVALID_CONFIG: "), bad.stderr
        assert "fanout: 'lots' is not of type 'integer'" in bad.stderr
        assert "'depth' was unexpected" in bad.stderr
        missing = d.vsmctl("spawn", "--agent", "hello")
        assert missing.returncode == 1 and "'who' is a required property" in missing.stderr
        c = d.client()
        assert c.list_child_vsms() == []  # nothing was forked for either

        hello = c.spawn_recursive_vsm(None, SpawnConfig(agent="hello", settings={"who": "you"}))
        assert c.call(hello.id, "hi") == {"hello": "you"}
        # From inside a VSM (its spawn_child tool): the same refusal, as the tool's error.
        res = d.vsmctl(
            "call", hello.id, "spawn_child", "--arg", "agent=hello", "--arg", 'config={"who": 1}'
        )
        assert res.returncode == 1 and "INVALID_CONFIG" in res.stderr, res.stderr
        assert "who: 1 is not of type 'string'" in res.stderr
        assert [v.id for v in c.list_child_vsms()] == [hello.id]


def test_capabilities_are_granted_down_the_tree_and_enforced(
    broker_url: str, tmp_path: Path
) -> None:
    with running_daemon(broker_url, tmp_path / "state") as d:
        c = d.client()
        top = d.vsmctl("spawn", "--name", "boxed", "--capabilities", "state,mcp,messaging", "-q")
        assert top.returncode == 0, top.stderr
        boxed = top.stdout.strip()
        assert c.show(boxed).policy["capabilities"] == ["mcp", "messaging", "state"]
        # Its MCP spawn_child runs as the VSM, which may not spawn: refused in the VSM.
        res = d.vsmctl("call", boxed, "spawn_child", "--arg", "name=kid")
        assert res.returncode == 4, (res.stdout, res.stderr)
        assert "VSM boxed was not granted the spawn capability" in res.stderr
        # A parent hands out no more than it holds; by default a child gets its type's
        # capabilities within its parent's.
        free = c.spawn_recursive_vsm(None, SpawnConfig(name="free")).id
        kid = d.vsmctl("spawn", "--parent", free, "--name", "k", "--capabilities", "state")
        assert kid.returncode == 0, kid.stderr
        over = d.vsmctl("spawn", "--parent", boxed, "--name", "x", "--capabilities", "spawn")
        assert over.returncode == 4 and "cannot grant spawn: it does not hold it" in over.stderr
        bad = d.vsmctl("spawn", "--name", "y", "--capabilities", "teleport")
        assert bad.returncode == 2 and "teleport" in bad.stderr  # a usage error, nothing sent
