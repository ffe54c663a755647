"""Quotas: the sampler on a real process (this one) and rlimits in a child interpreter."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.harness import poll_for
from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakePool, events_of
from vsmd.daemon import procstat
from vsmd.daemon.quotas import Sample, Sampler, Violation
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.protocol import Policy, SpawnConfig

ME = os.getpid()
REPO = Path(__file__).resolve().parents[2]
HUGE = 10**9
MEMORY_MESSAGE = re.compile(r"memory quota exceeded: [\d.]+ MiB > 1 MiB for 3 samples")


def target(vsm_id: str = "me", action: str = "restart", **policy: Any) -> Sample:
    return Sample(vsm_id, ME, Policy(**policy), action)


def hog(name: str, **policy: Any) -> SpawnConfig:
    return SpawnConfig(name=name, policy=Policy(**policy))


def test_metrics_of_a_real_process() -> None:
    metrics, violations = Sampler(3).sample([target(max_fds=HUGE, max_procs=HUGE)])
    m = metrics["me"]
    assert m["rss_mb"] > 1
    assert m["threads"] >= 1
    assert m["cpu_percent"] >= 0
    assert m["fds"] >= 3  # stdin, stdout, stderr at least
    assert m["procs"] >= 0
    assert violations == []


def test_fds_and_procs_are_read_only_when_limited() -> None:
    metrics, _ = Sampler(3).sample([target()])
    assert set(metrics["me"]) == {"rss_mb", "cpu_percent", "threads"}


def test_violation_only_after_n_samples_in_a_row() -> None:
    sampler = Sampler(3)
    over = target(memory_mb=1)
    within = target("big", memory_mb=HUGE)  # the same process under a huge limit
    for _ in range(2):
        _, violations = sampler.sample([over, within])
        assert violations == []
    metrics, violations = sampler.sample([over, within])
    [v] = violations
    assert (v.vsm_id, v.metric, v.action) == ("me", "memory", "restart")
    assert MEMORY_MESSAGE.fullmatch(v.message), v.message
    assert set(metrics) == {"me", "big"}
    # Acted on: the count starts over.
    assert sampler.sample([over])[1] == []


def test_strikes_reset_under_the_limit() -> None:
    sampler = Sampler(3)
    sampler.sample([target(memory_mb=1)])
    sampler.sample([target(memory_mb=1)])
    sampler.sample([target(memory_mb=HUGE)])  # back under: the two strikes are gone
    sampler.sample([target(memory_mb=1)])
    assert sampler.sample([target(memory_mb=1)])[1] == []
    assert len(sampler.sample([target(memory_mb=1)])[1]) == 1


def test_forget_clears_the_strikes() -> None:
    sampler = Sampler(2)
    sampler.sample([target(memory_mb=1)])
    sampler.forget("me")
    assert sampler.sample([target(memory_mb=1)])[1] == []
    assert len(sampler.sample([target(memory_mb=1)])[1]) == 1


def test_each_metric_counts_on_its_own() -> None:
    sampler = Sampler(1)
    _, violations = sampler.sample([target(action="warn", memory_mb=1, max_fds=1)])
    by_metric = {v.metric: v for v in violations}
    assert set(by_metric) == {"memory", "fds"}
    assert re.fullmatch(
        r"open files quota exceeded: \d+ > 1 for 1 samples", by_metric["fds"].message
    )
    assert by_metric["fds"].action == "warn"


def test_a_gone_process_is_skipped() -> None:
    gone = Sample("gone", 2**22 + 1, Policy(memory_mb=1), "warn")  # above Linux's largest pid
    metrics, violations = Sampler(1).sample([gone, target(memory_mb=HUGE)])
    assert set(metrics) == {"me"}
    assert violations == []


# A process that holds MiB of touched memory (argv[1]) and says so, then waits to be killed.
HOG = (
    "import signal, sys; b = b'x' * (int(sys.argv[1]) << 20); print('ready', flush=True); "
    "signal.pause()"
)
SPIN = "print('ready', flush=True)\nwhile True: pass"


@contextlib.contextmanager
def subprocess_of_mine(code: str, *args: str, nested: bool = False) -> Iterator[int]:
    """Runs ``code`` in a child of this process (a grandchild when ``nested``); its pid."""
    argv = [sys.executable, "-c", code, *args]
    if nested:  # one more level: a helper that starts a helper
        argv = [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield proc.pid
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def own_rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def test_memory_counts_the_whole_process_tree() -> None:
    sampler = Sampler(1, tree_refresh=0.0)
    with subprocess_of_mine(HOG, "100", nested=True):
        metrics, violations = sampler.sample([target(memory_mb=own_rss_mb() + 50)])
        assert metrics["me"]["rss_mb"] >= own_rss_mb() + 90  # the grandchild's 100 MiB
        assert [v.metric for v in violations] == ["memory"]


def test_cpu_counts_the_whole_process_tree() -> None:
    sampler = Sampler(1, tree_refresh=0.0)

    def busy() -> bool:
        # This process sleeps between polls: only the spinning child can reach 50 %.
        return bool(sampler.sample([target()])[0]["me"]["cpu_percent"] >= 50)

    with subprocess_of_mine(SPIN):
        poll_for(busy, timeout=60, interval=0.2, what="the child's cpu in the sample")


def test_an_ended_subprocess_leaves_the_sample() -> None:
    sampler = Sampler(1, tree_refresh=0.0)
    with subprocess_of_mine(HOG, "100") as pid:
        sampler.sample([target()])
        assert pid in sampler._trees["me"]  # kept for the next cpu reading
    metrics, _ = sampler.sample([target()])
    assert pid not in sampler._trees["me"]
    assert metrics["me"]["rss_mb"] < own_rss_mb() + 50


def test_the_process_table_is_read_at_most_once_per_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scans: list[bool] = []
    real = procstat.children_map

    def counting() -> dict[int, list[int]]:
        scans.append(True)
        return real()

    monkeypatch.setattr(procstat, "children_map", counting)
    sampler = Sampler(3, tree_refresh=3600.0)
    for _ in range(5):  # the slices of one pass
        sampler.sample([target(max_procs=HUGE)])
    assert len(scans) == 1


def run_as_me(manager: SpawnManager, pool: FakePool, cfg: SpawnConfig) -> str:
    """A VSM whose process is this test process (the fake pool only records signals)."""
    fut = manager.spawn_recursive_vsm(None, cfg)
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, ME)
    manager.on_ready(vsm_id, ME)
    assert fut.done()
    return vsm_id


def test_manager_sample_feeds_metrics_and_acts(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(quota_violations=2)
    hungry = run_as_me(manager, pool, hog("hog", memory_mb=1, quota_action="restart"))
    calm = run_as_me(manager, pool, hog("calm", memory_mb=HUGE, quota_action="terminate"))
    manager.sample()
    assert manager.show(hungry).metrics["rss_mb"] > 1
    assert manager.show(calm).metrics["rss_mb"] > 1
    assert pool.kills == []
    manager.sample()
    assert pool.kills == [(ME, signal.SIGTERM)]
    [event] = events_of(manager, "quota_restart")
    assert event.vsm_id == hungry
    assert "memory quota exceeded" in event.message
    assert "for 2 samples" in event.message
    assert manager.show(calm).status == "running"


def test_only_running_vsms_are_sampled(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(quota_violations=1)
    manager.spawn_recursive_vsm(None, hog("young", memory_mb=1))
    manager.on_spawned(pool.last.vsm_id, ME)  # not ready yet
    manager.sample()
    assert manager.show(pool.last.vsm_id).metrics == {}
    assert events_of(manager) == []


def test_default_quota_action_from_the_config(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(quota_violations=1, default_quota_action="terminate")
    vsm_id = run_as_me(manager, pool, hog("hog", memory_mb=1))
    manager.sample()
    assert [e.kind for e in events_of(manager) if e.kind.startswith("quota")] == ["quota_terminate"]
    assert manager.show(vsm_id).status == "stopping"
    assert pool.kills == [(ME, signal.SIGTERM)]


def test_violation_is_a_value() -> None:
    v = Violation("a", "cpu", "m", "warn")
    assert v == Violation("a", "cpu", "m", "warn")


# --- rlimits ----------------------------------------------------------------------------------


def in_child(code: str) -> str:
    prelude = "import resource\nfrom vsmd.supervisor.rlimits import apply_rlimits\n"
    res = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_max_fds_sets_nofile_to_twice_the_quota_with_a_floor() -> None:
    out = in_child(
        "apply_rlimits({'max_fds': 40})\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "apply_rlimits({'max_fds': 10})\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    assert out.splitlines() == [str((80, 80)), str((64, 64))]


def test_memory_mb_stops_a_large_allocation() -> None:
    out = in_child(
        "apply_rlimits({'memory_mb': 50})\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "print(soft == hard)\n"
        "try:\n"
        "    block = bytearray(500 * 2**20)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
        "else:\n"
        "    print('allocated', len(block))\n"
    )
    assert out.splitlines() == ["True", "MemoryError"]


def test_no_quota_changes_nothing() -> None:
    out = in_child(
        "before = [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NOFILE)]\n"
        "apply_rlimits({})\n"
        "apply_rlimits({'memory_mb': None, 'max_fds': 0})\n"
        "after = [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NOFILE)]\n"
        "print(before == after)\n"
    )
    assert out == "True"
