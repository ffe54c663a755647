"""The daemon's log: a VSM's stdout and stderr come in with its id and path; log_format json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmd.protocol import SpawnConfig
from vsmd.supervisor.output import MAX_LINE

AGENTS = {"agent_modules": ["tests.support.log_agents"]}


def spawn_chatty(d: DaemonProc, **settings: Any) -> tuple[str, str, str]:
    """A parent and a chatty child under it: (child id, child path, parent id)."""
    c = d.client()
    parent = c.spawn_recursive_vsm(None, SpawnConfig(name="team"))
    kid = c.spawn_recursive_vsm(
        parent.id, SpawnConfig(name="talker", agent="chatty", settings=settings)
    )
    return kid.id, kid.path, parent.id


def wait_logged(d: DaemonProc, line: str) -> None:
    poll_for(lambda: line in d.log(), what=f"{line.strip()[:120]!r} in the log")


def test_a_vsms_output_is_in_the_log_with_its_id_and_path(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config=AGENTS) as d:
        vsm_id, path, _ = spawn_chatty(d, say="psst", long=MAX_LINE + 100, helper=True)
        assert path == "team.talker"
        who = f"WARNING vsmd.vsm.output: vsm {vsm_id} team.talker:"
        for text in ("psst on stderr", "psst on stdout", "psst from a helper"):
            wait_logged(d, f"{who} {text}\n")
        wait_logged(d, f"{who} {'x' * MAX_LINE} ... (100 more bytes cut)\n")
        # Later output too, not only what it wrote at start.
        d.client().call(vsm_id, "say", {"text": "later"})
        wait_logged(d, f"{who} later\n")
        # Nothing of it reached the log raw, without whose it is.
        lines = d.log().splitlines()
        assert not [ln for ln in lines if "psst" in ln and who not in ln]


def test_json_log_is_one_object_per_line_with_vsm_fields(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config={**AGENTS, "log_format": "json"}) as d:
        vsm_id, path, parent_id = spawn_chatty(d, say="json")

        def records() -> list[dict[str, Any]]:
            # Every line parses (the last one may still be on its way).
            return [json.loads(ln) for ln in d.log().splitlines() if ln.endswith("}")]

        def said() -> dict[str, Any] | None:
            return next((r for r in records() if r["message"] == "json on stderr"), None)

        rec = poll_for(said, what="the VSM's line as a JSON record")
        assert rec["logger"] == "vsmd.vsm.output" and rec["level"] == "WARNING"
        assert rec["vsm_id"] == vsm_id and rec["path"] == path and isinstance(rec["pid"], int)
        assert rec["time"].endswith("+00:00")
        d.client().terminate_child_vsm(parent_id)
        assert d.stop() == 0
    lines = d.log().splitlines()
    objects = [json.loads(ln) for ln in lines]  # every line, start to stop
    assert all({"time", "level", "logger", "message"} <= o.keys() for o in objects)
    [ended] = [o for o in objects if o.get("event") == "terminated"]
    assert ended["vsm_id"] == parent_id and ended["path"] == "team"
    assert any(o["message"] == "vsmd stopped" for o in objects)
