"""`vsmctl mcp` as the server command of an MCP client nobody on this project wrote.

Our other MCP tests speak to the bridge with the Python SDK the VSMs serve with, so a bridge
that only that SDK understands would pass them. Here the MCP Inspector's command-line mode (the
TypeScript SDK; pinned in tests/mcp_inspector, installed by `make test`) runs `vsmctl mcp <id>`
the way a user would configure it in any MCP host: it lists the VSM's tools and resources and
calls tools, and what it prints as JSON must be what the VSM serves.

The Inspector hands a stdio server only a few variables of its own environment (HOME, PATH and
the like), not VSM_*: the broker URL and namespace go with `-e KEY=VALUE`, as a user's would,
and the Inspector runs without them so the test shows that way works. Each run starts its own
`vsmctl mcp`, so each is a whole session: initialize, one request, end of stdin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import BIN, REPO, DaemonProc, running_daemon
from vsmd.protocol import SpawnConfig

INSPECTOR = REPO / "tests" / "mcp_inspector" / "node_modules" / ".bin" / "mcp-inspector"
TOOLS = {
    "status",
    "spawn_child",
    "list_children",
    "terminate_child",
    "get_state",
    "set_policy",
    "send",
    "raise_alert",
}
# Far longer than a run takes (about a second): a hang fails the test, not a slow machine.
RUN_TIMEOUT = 120.0


@dataclass
class Served:
    d: DaemonProc
    vsm_id: str
    home: Path

    def inspect(self, *args: str) -> dict[str, Any]:
        """The Inspector's result for one request to the VSM's server (its ``result``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VSM_")}
        # Its catalog, client config and any secrets live under ~/.mcp-inspector: not the
        # developer's.
        env["HOME"] = str(self.home)
        cmd = [
            str(INSPECTOR),
            "--cli",
            "-e",
            f"VSM_BROKER_URL={self.d.env['VSM_BROKER_URL']}",
            "-e",
            f"VSM_NAMESPACE={self.d.env['VSM_NAMESPACE']}",
            "--format",
            "json",
            *args,
            "--",
            str(BIN / "vsmctl"),
            "mcp",
            self.vsm_id,
        ]
        # A session of its own, so a run that hangs is killed with the `vsmctl mcp` it started.
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"the Inspector did not finish in {RUN_TIMEOUT} s: {cmd}\n{out}\n{err}"
            ) from None
        # Failures come as {"error": {"code", "message"}} on stderr and an exit code not 0.
        assert proc.returncode == 0, (proc.returncode, out, err)
        result: dict[str, Any] = json.loads(out)["result"]
        return result

    def call(self, tool: str, *args: str) -> dict[str, Any]:
        """What a tool returned: its structured content, else its text content's JSON."""
        result = self.inspect("--method", "tools/call", "--tool-name", tool, *args)
        assert result.get("isError") is not True, result
        if result.get("structuredContent") is not None:
            structured: dict[str, Any] = result["structuredContent"]
            return structured
        [text] = [c["text"] for c in result["content"] if c["type"] == "text"]
        parsed: dict[str, Any] = json.loads(text)
        return parsed


@pytest.fixture(scope="module")
def served(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not INSPECTOR.exists():
        pytest.fail(
            f"the MCP Inspector is not installed ({INSPECTOR} is missing): run `make test`, "
            "which installs it",
            pytrace=False,
        )
    tmp = tmp_path_factory.mktemp("inspector")
    home = tmp / "home"
    home.mkdir()
    with running_daemon(broker_url, tmp / "state") as d:
        vsm_id = d.client().spawn_recursive_vsm(None, SpawnConfig(name="root")).id
        yield Served(d, vsm_id, home)


def test_the_inspector_lists_every_tool(served: Served) -> None:
    tools = served.inspect("--method", "tools/list")["tools"]
    names = {t["name"] for t in tools}
    assert names >= TOOLS, names
    assert all(t["inputSchema"]["type"] == "object" for t in tools), tools


def test_the_inspector_calls_status(served: Served) -> None:
    status = served.call("status")
    assert status["id"] == served.vsm_id
    assert status["path"] == "root"


def test_the_inspectors_tool_arguments_reach_the_vsm(served: Served) -> None:
    kid = served.call("spawn_child", "--tool-arg", "name=kid")
    assert kid["path"] == "root.kid"
    children = served.d.client().list_child_vsms(served.vsm_id)
    assert [(c.id, c.path) for c in children] == [(kid["id"], "root.kid")]


def test_the_inspector_lists_the_state_resource(served: Served) -> None:
    resources = served.inspect("--method", "resources/list")["resources"]
    assert f"vsm://{served.vsm_id}/state" in {r["uri"] for r in resources}, resources
