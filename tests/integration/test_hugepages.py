"""The real fork server maps its heap with huge pages once it has warmed up (its first spawn),
and not with memory_merge, whose page merging would split them again."""

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


@pytest.mark.parametrize("merge", [False, True])
def test_the_fork_server_heap_is_on_huge_pages_unless_pages_are_merged(
    broker_url: str, tmp_path: Path, merge: bool
) -> None:
    with running_daemon(broker_url, tmp_path, config={"memory_merge": merge}) as d:
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="huge"))
        pid = c.show(vsm.id).pid
        assert pid is not None
        forkserver = psutil.Process(pid).ppid()
        assert "forkserver" in " ".join(psutil.Process(forkserver).cmdline())
        huge = anon_huge_kib(forkserver)
        if merge:
            assert huge == 0
        else:
            assert huge >= 2048  # at least one 2 MiB page
        # VSMs forked from it, the first and a later one, run and answer themselves.
        later = c.spawn_recursive_vsm(vsm.id, SpawnConfig(name="later"))
        for one in (vsm, later):
            assert c.ping_vsm(one.id)["entry"] == "forkserver.py"
