"""The worker in secure mode (one daemon on its own embedded node): its token lets it declare
and consume its task queue; operators submit; its ancestors' tasks are taken, a viewer's and
another tree's refused by the broker-checked user_id; terminate deletes the queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import queue_exists
from tests.support.secure import start_secure_daemon
from vsmctl.client import VsmClient
from vsmctl.tasks import TaskSubmitter
from vsmd.errors import Unauthorized
from vsmd.protocol import SpawnConfig
from vsmd.security import credentials

TASKS = {"tasks_modules": ["tests.support.task_funcs"]}


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_who_may_give_a_secure_worker_tasks(tmp_path: Path) -> None:
    d = start_secure_daemon(
        tmp_path, 'agent_modules = ["tests.support.task_agents"]\nprobe_interval = 0'
    )
    try:
        c = d.client()
        top = c.spawn_recursive_vsm(None, SpawnConfig(name="boss", agent="taskpoke"))
        worker = c.call(top.id, "spawn_worker", TASKS, 60.0)
        wid = worker["id"]
        assert TaskSubmitter(c).submit(wid, "add", {"a": 1, "b": 2}, wait=True) == {"sum": 3}
        poke = {"worker": wid, "task": "add", "args": {"a": 2, "b": 2}}
        assert c.call(top.id, "poke", poke, 60.0) == {"result": {"sum": 4}}  # its parent
        other = c.spawn_recursive_vsm(None, SpawnConfig(name="other", agent="taskpoke"))
        refused = c.call(other.id, "poke", poke, 60.0)["error"]
        assert refused["code"] == "UNAUTHORIZED", refused
        assert f"vsm-{other.id} may not give boss.w tasks" in refused["message"]
        viewer_url = credentials.read(
            credentials.credentials_file(d.state_dir, "viewer", d.namespace)
        ).broker_url
        with (
            VsmClient(viewer_url, d.namespace, 30) as viewer,
            pytest.raises(Unauthorized, match="vsmd-viewer may not give"),
        ):
            TaskSubmitter(viewer).submit(wid, "add", {"a": 1, "b": 1}, wait=True)
        c.terminate_child_vsm(top.id)
        assert not queue_exists(d.broker_url, c.topo.task_queue(wid))
        c.terminate_child_vsm(other.id)
    finally:
        d.stop()
