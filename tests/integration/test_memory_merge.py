"""memory_merge: VSMs forked by the fork server carry the kernel's page-merging mark; without the
option they do not. (Whether KSM then merges is the kernel's work, measured in the benchmarks:
tests must not switch on a thread that scans every process of the machine.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import running_daemon
from vsmd.protocol import SpawnConfig

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/ksm_stat").exists(), reason="a kernel without per-process KSM (6.4+)"
)


def merge_mark(pid: int) -> str:
    for line in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines():
        if line.startswith("ksm_merge_any:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no ksm_merge_any in /proc/{pid}/ksm_stat")


@pytest.mark.parametrize("merge", [True, False])
def test_vsms_carry_the_mark_only_when_asked(broker_url: str, tmp_path: Path, merge: bool) -> None:
    with running_daemon(broker_url, tmp_path, config={"memory_merge": merge}) as d:
        c = d.client()
        root = c.spawn_recursive_vsm(None, SpawnConfig(name="merged"))
        kid = c.spawn_recursive_vsm(root.id, SpawnConfig(name="kid"))
        for vsm in (root, kid):
            pid = c.show(vsm.id).pid
            assert pid is not None
            assert merge_mark(pid) == ("yes" if merge else "no")
        if merge:
            running = Path("/sys/kernel/mm/ksm/run").read_text().strip() == "1"
            # The daemon says at start whether the mark will do anything.
            expected = "merges identical pages" if running else "KSM is not running"
            assert expected in d.log()
