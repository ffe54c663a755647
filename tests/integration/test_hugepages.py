"""With huge_pages = true the real fork server maps its heap with huge pages once it has warmed
up (its first spawn), and not with memory_merge, whose page merging would split them again;
by default it does not."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.support.harness import running_daemon
from tests.support.kernel import anon_huge_kib, collapse_supported
from vsmd.protocol import SpawnConfig

pytestmark = pytest.mark.skipif(
    not collapse_supported(), reason="needs MADV_COLLAPSE (Linux 6.1) and THP"
)


@pytest.mark.parametrize(
    ("config", "expect_huge"),
    [
        ({"huge_pages": True}, True),
        ({"huge_pages": True, "memory_merge": True}, False),
        ({}, False),
    ],
    ids=["huge_pages", "memory_merge", "default_off"],
)
def test_the_fork_server_heap_is_on_huge_pages_when_asked_and_not_merged(
    broker_url: str, tmp_path: Path, config: dict[str, object], expect_huge: bool
) -> None:
    with running_daemon(broker_url, tmp_path, config=config) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="huge"))
        pid = c.show(vsm.id).pid
        assert pid is not None
        forkserver = psutil.Process(pid).ppid()
        assert "forkserver" in " ".join(psutil.Process(forkserver).cmdline())
        huge = anon_huge_kib(forkserver)
        if expect_huge:
            assert huge >= 2048  # at least one 2 MiB page
        else:
            assert huge == 0
        # VSMs forked from it, the first and a later one, run and answer themselves.
        later = c.spawn_recursive_vsm(vsm.id, SpawnConfig(name="later"))
        for one in (vsm, later):
            assert c.ping_vsm(one.id)["entry"] == "forkserver.py"
