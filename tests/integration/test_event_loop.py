"""event_loop: every VSM runs on the loop the config names, and works the same on both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.harness import running_daemon
from vsmd.protocol import SpawnConfig


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_vsms_run_on_the_configured_loop(broker_url: str, tmp_path: Path, kind: str) -> None:
    with running_daemon(broker_url, tmp_path, config={"event_loop": kind}) as d:
        c = d.client()
        root = c.spawn_recursive_vsm(None, SpawnConfig(name="looped"))
        kid = c.spawn_recursive_vsm(root.id, SpawnConfig(name="kid"))
        for vsm in (root, kid):
            assert c.ping_vsm(vsm.id)["loop"] == kind
        # A request through the loop's machinery and its answer (the noop agent echoes).
        sent = d.vsmctl("send", kid.id, "hello", "--body", '{"x": [1]}', "--wait", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout) == {"echo": {"x": [1]}, "kind": "hello"}
        assert c.terminate_child_vsm(root.id) == [kid.id, root.id]


def test_the_default_is_uvloop(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="plain"))
        assert c.ping_vsm(vsm.id)["loop"] == "uvloop"
