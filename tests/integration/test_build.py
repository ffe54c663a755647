"""`python -m build` makes a wheel and an sdist that carry what an installation needs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from vsmd import __version__

REPO = Path(__file__).resolve().parents[2]
PACKAGED = {
    "vsmd/data/vsmd.toml": REPO / "config" / "vsmd.toml",
    "vsmd/data/vsmd.service": REPO / "systemd" / "vsmd.service",
}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The default: the sdist first, then the wheel built from the unpacked sdist, so the wheel
    # proves the sdist is complete too.
    res = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_the_wheel_carries_the_config_and_the_unit(dist: Path) -> None:
    wheel = dist / f"vsmd-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        for inside, source in PACKAGED.items():
            assert z.read(inside).decode() == source.read_text()
        names = z.namelist()
        entry_points = z.read(f"vsmd-{__version__}.dist-info/entry_points.txt").decode()
    assert "vsmctl/top.py" in names and "vsmd/daemon/cli.py" in names
    assert "vsmd = vsmd.daemon.cli:main" in entry_points
    assert "vsmctl = vsmctl.app:main" in entry_points
    assert not [n for n in names if n.startswith("tests/")]


def test_the_sdist_carries_the_sources_of_the_packaged_files(dist: Path) -> None:
    with tarfile.open(dist / f"vsmd-{__version__}.tar.gz") as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    for name in (*PACKAGED, "config/vsmd.toml", "systemd/vsmd.service", "CHANGELOG.md"):
        assert members[name].isfile(), name


def test_the_installed_wheel_has_versions_and_its_files(dist: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    wheel = dist / f"vsmd-{__version__}-py3-none-any.whl"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        capture_output=True,
        check=True,
        timeout=120,
    )
    # The installed copy first on the path, ahead of the source tree; dependencies from here.
    env = dict(os.environ, PYTHONPATH=str(target))

    def run(*args: str) -> str:
        res = subprocess.run(
            list(args),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert run(str(target / "bin" / "vsmd"), "--version") == f"vsmd {__version__}\n"
    assert run(str(target / "bin" / "vsmctl"), "--version") == f"vsmctl {__version__}\n"
    where = run(sys.executable, "-c", "import vsmd.data; print(vsmd.data.__file__)")
    assert where.startswith(str(target))
    unit = run(sys.executable, "-m", "vsmd.data", "vsmd.service")
    assert unit == PACKAGED["vsmd/data/vsmd.service"].read_text()
    config = run(sys.executable, "-c", "import vsmd.data; print(vsmd.data.sample_config())")
    assert config == PACKAGED["vsmd/data/vsmd.toml"].read_text() + "\n"
