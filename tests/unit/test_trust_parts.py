"""Pieces of secure mode that need no broker: uids per VSM, what other users can read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from vsmd.bus.topology import Topology
from vsmd.config import Config
from vsmd.daemon.trust import Trust
from vsmd.security.fs_check import _open_to_others


def test_each_live_vsm_has_a_uid_of_its_own_and_a_removed_one_gives_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # uids per VSM: only when vsmd runs as root
    trust = Trust(Config(vsm_uid_base=5000), Topology("t"), b"k" * 32)
    assert [trust._uid(v) for v in ("a", "b", "c")] == [5000, 5001, 5002]
    assert trust._uid("b") == 5001  # a restart keeps it
    trust.removed("b")
    trust.removed("a")
    assert [trust._uid(v) for v in ("d", "e", "f")] == [5000, 5001, 5003]


def test_other_users_can_read_only_what_every_directory_above_lets_them() -> None:
    # Under /tmp itself: pytest's own temporary directories are closed to others already.
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        _check_modes(Path(top))


def _check_modes(tmp_path: Path) -> None:
    closed, opened = tmp_path / "closed", tmp_path / "open"
    for d, mode in ((closed, 0o700), (opened, 0o755)):
        d.mkdir()
        (d / "mod.py").write_text("x = 1\n")
        (d / "mod.py").chmod(0o644)
        d.chmod(mode)
    tmp_path.chmod(0o755)
    assert _open_to_others(opened / "mod.py")
    assert not _open_to_others(closed / "mod.py")  # its directory cannot be entered
    (opened / "mod.py").chmod(0o600)
    assert not _open_to_others(opened / "mod.py")
