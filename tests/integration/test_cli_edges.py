"""Command-line edges: no broker for vsmd, bad config, and a light vsmctl start-up path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.harness import BIN, new_namespace, poll_for, run_tool, vsm_env


def test_vsmd_without_a_broker_says_so_and_exits_3(broker_url: str, tmp_path: Path) -> None:
    res = run_tool(
        "vsmd",
        "run",
        "--broker",
        "amqp://guest:guest@127.0.0.1:1/%2F",
        "--state-dir",
        str(tmp_path),
        namespace=new_namespace(),
        broker_url=broker_url,
    )
    assert res.returncode == 3
    lines = [line for line in res.stderr.splitlines() if line.startswith("vsmd:")]
    assert len(lines) == 1
    assert "127.0.0.1:1" in lines[0] and "--broker embedded" in lines[0]
    assert "Traceback" not in res.stderr


def test_vsmd_with_a_bad_config_value_exits_2(broker_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[vsmd]\nmax_total = "lots"\n')
    res = run_tool(
        "vsmd", "run", "--config", str(bad), namespace=new_namespace(), broker_url=broker_url
    )
    assert res.returncode == 2
    assert res.stderr.strip() == "vsmd: invalid value for max_total: 'lots' is not a int"


def _loaded_after(imports: str, packages: tuple[str, ...], modules: tuple[str, ...]) -> str:
    """In a fresh interpreter, after ``import <imports>``: the loaded modules of those top-level
    ``packages`` or starting with one of ``modules``, as printed."""
    code = (
        f"import sys, {imports}; print([m for m in sys.modules if m.split('.')[0] in "
        f"{packages!r} or m.startswith({modules!r})])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def test_vsmctl_does_not_import_the_daemon_or_heavy_libraries() -> None:
    heavy = ("mcp", "pydantic", "anyio", "aio_pika", "aiormq", "psutil")
    daemon = ("vsmd.daemon.service", "vsmd.vsm.runtime", "vsmd.daemon.spawn_manager")
    assert _loaded_after("vsmctl.app", heavy, daemon) == "[]"


def test_the_daemon_imports_neither_the_vsm_runtime_nor_the_mcp_sdk() -> None:
    """They are the fork server's (imported once there, for every VSM); the daemon starts
    without paying for them, and its process stays small."""
    heavy = ("mcp", "mcp_types", "aio_pika", "aiormq", "uvloop")
    vsm_side = ("vsmd.vsm", "vsmd.mcp.server", "vsmd.mcp.host")
    assert _loaded_after("vsmd.daemon.cli, vsmd.daemon.service", heavy, vsm_side) == "[]"


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_embedded_broker_left_by_a_killed_vsmd_is_replaced(broker_url: str, tmp_path: Path) -> None:
    ns = new_namespace()
    cmd = [str(BIN / "vsmd"), "run", "--broker", "embedded", "--state-dir", str(tmp_path)]
    env = vsm_env(ns, broker_url)
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    node = f"vsmd-{ns}"
    try:
        poll_for(lambda: _node_pids(node), timeout=90, what="the embedded node")
        assert first.stderr is not None
        for line in first.stderr:
            if "vsmd ready" in line:
                break
        first.kill()  # no chance to stop its node
        first.communicate(timeout=30)
        assert _node_pids(node)  # the node outlived the daemon
        second = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            assert second.stderr is not None
            seen = []
            for line in second.stderr:
                seen.append(line)
                if "vsmd ready" in line or second.poll() is not None:
                    break
            assert any("vsmd ready" in line for line in seen), "".join(seen)
        finally:
            second.send_signal(signal.SIGTERM)
            second.communicate(timeout=60)
        assert second.returncode == 0
        poll_for(lambda: not _node_pids(node), timeout=30, what="the node to stop with vsmd")
    finally:
        for pid in _node_pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _node_pids(node: str) -> list[int]:
    """beam processes of the embedded node (its environment names it)."""
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] != "beam.smp":
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get("RABBITMQ_NODENAME", "").startswith(node):
                found.append(p.pid)
    return found


def test_vsmd_with_an_agent_module_that_does_not_import_exits_2(
    broker_url: str, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[vsmd]\nagent_modules = ["nosuchmod_for_vsmd"]\n')
    res = run_tool(
        "vsmd",
        "run",
        "--config",
        str(cfg),
        "--state-dir",
        str(tmp_path),
        namespace=new_namespace(),
        broker_url=broker_url,
    )
    assert res.returncode == 2
    assert "vsmd: cannot import agent module 'nosuchmod_for_vsmd'" in res.stderr
