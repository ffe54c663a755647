"""Secure mode on a broker of one's own: `vsmd broker setup`, then vsmd against its URL."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import BIN, REPO, new_namespace
from tests.support.secure import start_secure_daemon
from vsmd.broker.embedded import EmbeddedBroker
from vsmd.daemon.secure_start import check_boundary
from vsmd.errors import ConfigError
from vsmd.mcp.client import create_mcp_client
from vsmd.protocol import SpawnConfig
from vsmd.security import broker_setup
from vsmd.security.identity import RESOURCE_SERVER_ID, VHOST
from vsmd.security.tokens import TokenMinter


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSM_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _vsmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vsmd"), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_setup_then_a_secure_daemon_on_that_broker(tmp_path: Path) -> None:
    ns, port, state = new_namespace(), _free_port(), tmp_path / "state"
    url = f"amqp://127.0.0.1:{port}/"
    done = _vsmd("broker", "setup", "--broker", url, "--state-dir", str(state), "--namespace", ns)
    assert done.returncode == 0, done.stderr
    kept = broker_setup.load(state, ns)
    out = state / "broker-setup"
    for f in [broker_setup.kept_file(state, ns), *out.iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert "rabbitmqctl import_definitions" in done.stdout and "delete_user guest" in done.stdout
    secrets = [kept.daemon_password, kept.operator_password, kept.viewer_password]
    assert not any(s in done.stdout + done.stderr for s in secrets)
    # A second run keeps the key and the passwords: the broker need not be set up again.
    assert (
        _vsmd(
            "broker", "setup", "--broker", url, "--state-dir", str(state), "--namespace", ns
        ).returncode
        == 0
    )
    assert broker_setup.load(state, ns) == kept
    # The broker, set up from that setup (the embedded node writes the same files the setup
    # prints: the same plugin, config lines, key and definitions, guest deleted).
    node = EmbeddedBroker(tmp_path / "node", port=port, secure=kept.setup(500))
    node.start()
    try:
        d = start_secure_daemon(state, namespace=ns, broker=url)
        try:
            d.wait_ready(60.0)
            c = d.client()
            vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="own"))
            assert c.ping_vsm(vsm.id)["pong"] == vsm.id
            assert "set up by `vsmd broker setup`" in d.log()
            _the_daemons_login_drives_a_vsm_over_mcp(kept.daemon_url, ns, vsm.id)
            assert {v.name for v in c.list_child_vsms(vsm.id)} == {"by-vsmd", "by-someone"}
        finally:
            d.stop()
    finally:
        node.stop()


def _the_daemons_login_drives_a_vsm_over_mcp(daemon_url: str, ns: str, vsm_id: str) -> None:
    """create_mcp_client with the daemon's broker login (the setup keeps its password): the
    broker-checked user vsmd-daemon has the daemon's authority, whatever the envelope says."""

    async def as_daemon(sender: str) -> tuple[Any, Any]:
        async with create_mcp_client(daemon_url, ns, vsm_id, sender, 60.0) as s:
            status = await s.call_tool("status", {})
            spawned = await s.call_tool("spawn_child", {"name": f"by-{sender}"})
        return status.structured_content, spawned.structured_content

    for sender in ("vsmd", "someone"):
        status, spawned = asyncio.run(as_daemon(sender))
        assert status["caller"] == {"id": "vsmd", "role": "full"}, status
        assert spawned["path"] == f"own.by-{sender}", spawned


def test_a_broker_without_the_setup_is_refused_in_one_line(broker_url: str, tmp_path: Path) -> None:
    ns = new_namespace()
    run = ["run", "--broker", broker_url, "--state-dir", str(tmp_path), "--namespace", ns]
    done = _vsmd(*run)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "run `vsmd broker setup`" in done.stderr
    # Set up, but not applied to this broker: it takes no token, and vsmd will not start.
    assert (
        _vsmd(
            "broker",
            "setup",
            "--broker",
            broker_url,
            "--state-dir",
            str(tmp_path),
            "--namespace",
            ns,
        ).returncode
        == 0
    )
    done = _vsmd(*run)
    assert done.returncode == 2, done.stderr
    assert "does not accept vsmd's tokens" in done.stderr and "refusing to start" in done.stderr


def test_a_broker_that_lets_guest_in_is_refused(broker_url: str) -> None:
    # The shared test broker lets guest into "/": exactly what secure mode must refuse.
    url = re.sub(r"//[^@]*@", "//vsmd-daemon:unused@", broker_url)
    minter = TokenMinter(b"k" * 32, RESOURCE_SERVER_ID, VHOST)
    with pytest.raises(ConfigError, match="lets `guest` into vhost '/'"):
        check_boundary(url, minter)
