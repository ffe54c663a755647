"""What the running kernel can do, for tests of features that need it."""

from __future__ import annotations

import os
import re
from pathlib import Path


def collapse_supported() -> bool:
    """MADV_COLLAPSE (Linux 6.1) and transparent huge pages not turned off."""
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return release >= (6, 1) and thp.exists() and "[never]" not in thp.read_text()


def anon_huge_kib(pid: int) -> int:
    """AnonHugePages of a process, from /proc/<pid>/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError(f"no AnonHugePages in /proc/{pid}/smaps_rollup")
