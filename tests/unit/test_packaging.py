"""The files a packager installs are valid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vsmd.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]


def test_sample_config_shows_every_default() -> None:
    path = REPO / "config" / "vsmd.toml"
    assert load_config(path, env={}) == Config()
    text = path.read_text()
    for name in Config.__dataclass_fields__:
        assert f"\n{name} = " in text, f"config/vsmd.toml does not show {name}"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (REPO / "systemd" / "vsmd.service").read_text()
    vsmd_bin = Path(sys.executable).parent / "vsmd"
    assert "ExecStart=/usr/local/bin/vsmd run" in unit
    (tmp_path / "vsmd.service").write_text(unit.replace("/usr/local/bin/vsmd", str(vsmd_bin)))
    res = subprocess.run(
        [analyze, "verify", str(tmp_path / "vsmd.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in res.stderr.splitlines() if "vsmd.service" in line]
    assert problems == [], res.stderr
    assert "KillMode=mixed" in unit and "Restart=on-failure" in unit
