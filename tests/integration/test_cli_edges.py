"""Command-line edges: no broker for vsmd, bad config, and a light vsmctl start-up path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.harness import BIN, new_namespace, vsm_env


def test_vsmd_without_a_broker_says_so_and_exits_3(broker_url: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [
            str(BIN / "vsmd"),
            "run",
            "--broker",
            "amqp://guest:guest@127.0.0.1:1/%2F",
            "--state-dir",
            str(tmp_path),
        ],
        env=vsm_env(new_namespace(), broker_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 3
    lines = [line for line in res.stderr.splitlines() if line.startswith("vsmd:")]
    assert len(lines) == 1
    assert "127.0.0.1:1" in lines[0] and "--broker embedded" in lines[0]
    assert "Traceback" not in res.stderr


def test_vsmd_with_a_bad_config_value_exits_2(broker_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[vsmd]\nmax_total = "lots"\n')
    res = subprocess.run(
        [str(BIN / "vsmd"), "run", "--config", str(bad)],
        env=vsm_env(new_namespace(), broker_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == "vsmd: invalid value for max_total: 'lots' is not a int"


def test_vsmctl_does_not_import_the_daemon_or_heavy_libraries() -> None:
    code = (
        "import sys, vsmctl.app; heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('mcp', 'pydantic', 'anyio') or m in ('vsmd.daemon', 'vsmd.runtime', "
        "'vsmd.spawn_manager', 'psutil')]; print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
