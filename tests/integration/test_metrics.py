"""The Prometheus endpoint of a real daemon: scraped over HTTP, checked against what was done."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import DaemonProc, poll_for, running_daemon
from vsmd.daemon.steptimes import STEPS
from vsmd.errors import Conflict, NotFound, Throttled
from vsmd.protocol import SpawnConfig

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(d: DaemonProc) -> str:
    found = poll_for(
        lambda: re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", d.log()),
        30,
        what="the metrics address in the log",
    )
    return found.group(1)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_what_the_daemon_did(broker_url: str, tmp_path: Path) -> None:
    config = {
        "metrics_listen": "127.0.0.1:0",
        "metrics_top_n": 1,
        "sample_interval": 0.2,
        # Three spawns pass, the fourth is THROTTLED (one token per 1,000 s).
        "spawn_rate": 0.001,
        "spawn_burst": 3,
    }
    with running_daemon(broker_url, tmp_path, config=config) as d:
        url = metrics_url(d)
        c = d.client()
        a = c.spawn_recursive_vsm(None, SpawnConfig(name="a"))
        b = c.spawn_recursive_vsm(None, SpawnConfig(name="b"))
        c.spawn_recursive_vsm(a.id, SpawnConfig(name="child"))
        with pytest.raises(Throttled):
            c.spawn_recursive_vsm(None, SpawnConfig(name="d"))
        with pytest.raises(NotFound):  # refused before admission takes a token
            c.spawn_recursive_vsm(None, SpawnConfig(name="e", agent="no-such-agent"))
        with pytest.raises(Conflict):
            c.spawn_recursive_vsm(None, SpawnConfig(name="a"))
        assert c.terminate_child_vsm(b.id) == [b.id]
        # Both VSMs left sampled, so the endpoint has two to choose its top 1 from. A record's
        # metrics also hold the traffic rates the VSM reports itself, so wait for the sampler's key.
        poll_for(
            lambda: all("rss_mb" in v.metrics for v in c.list_child_vsms()), 60, 0.2, "samples"
        )

        def settled() -> Samples | None:
            # The endpoint's snapshot is rebuilt every second: wait for one built after the samples.
            s = scrape(url)
            done = value(s, "vsmd_terminations_total") >= 1
            sampled = any(k[0] == "vsmd_vsm_rss_bytes" for k in s)
            running = value(s, "vsmd_vsms", status="running", depth="1") == 1
            return s if done and sampled and running else None

        s = poll_for(settled, 60, 0.5, "the metrics to show the terminate and a sample")
        assert value(s, "vsmd_vsms", status="running", depth="2") == 1
        assert value(s, "vsmd_spawns_total") == 3
        assert value(s, "vsmd_spawn_ready_seconds_count") == 3
        assert value(s, "vsmd_spawn_ready_seconds_bucket", le="+Inf") == 3
        assert value(s, "vsmd_spawn_ready_seconds_sum") > 0
        assert value(s, "vsmd_spawn_refusals_total", code="THROTTLED") == 1
        assert value(s, "vsmd_spawn_refusals_total", code="NOT_FOUND") == 1
        assert value(s, "vsmd_spawn_refusals_total", code="CONFLICT") == 1
        assert value(s, "vsmd_throttle_refusals_total") == 1
        assert value(s, "vsmd_admin_request_seconds_count", command="spawn") == 6
        assert value(s, "vsmd_admin_request_seconds_count", command="terminate") == 1
        assert value(s, "vsmd_admin_request_seconds_count", command="ping") >= 1
        assert value(s, "vsmd_bus_reconnects_total") == 0
        # Every event kind the daemon logged is counted, and nothing more.
        kinds = [e["kind"] for e in c.events()[1]]
        for kind in set(kinds):
            assert value(s, "vsmd_events_total", kind=kind) == kinds.count(kind), kind
        assert value(s, "vsmd_terminations_total") == kinds.count("terminated")
        rss = [v for k, v in s.items() if k[0] == "vsmd_vsm_rss_bytes"]
        assert len(rss) == 1  # metrics_top_n of the two
        assert rss[0] > 1 << 20
        assert len([k for k in s if k[0] == "vsmd_vsm_cpu_percent"]) == 1


def test_no_endpoint_unless_asked(daemon: DaemonProc) -> None:
    daemon.client().ping()
    assert "metrics on" not in daemon.log()


def test_spawn_steps_count_each_step_of_a_spawn(broker_url: str, tmp_path: Path) -> None:
    # Two spawns pass, the third is THROTTLED: the refusal is the spawn path's one event.
    # Without cgroups, so the counts are the same on every host; test_cgroups.py counts those.
    config = {
        "metrics_listen": "127.0.0.1:0",
        "spawn_rate": 0.001,
        "spawn_burst": 2,
        "cgroups": "off",
    }
    with running_daemon(broker_url, tmp_path, config=config) as d:
        url = metrics_url(d)
        c = d.client()
        before = c.ping()["spawn_steps"]
        for name in ("a", "b"):
            c.spawn_recursive_vsm(None, SpawnConfig(name=name))
        with pytest.raises(Throttled):
            c.spawn_recursive_vsm(None, SpawnConfig(name="c"))
        # The loop sent each reply from within the ready handling, and answers this after it.
        after = c.ping()["spawn_steps"]
        grew = {step: after[step]["count"] - before[step]["count"] for step in STEPS}
        assert grew == {
            "admission": 3,
            "journal": 2,
            "cgroups": 0,
            "fork_request": 2,
            "ready": 2,
            "reply": 2,
            "events": 1,
        }
        timed: list[str] = [step for step in STEPS if step != "cgroups"]
        for step in timed:
            assert after[step]["seconds"] > before[step]["seconds"], step
            assert after[step]["cpu_seconds"] > before[step]["cpu_seconds"], step

        def caught_up() -> Samples | None:
            s = scrape(url)
            return s if value(s, "vsmd_spawn_step_total", step="admission") == 3 else None

        s = poll_for(caught_up, 60, 0.5, "the endpoint to show the spawns' steps")
        for step in STEPS:
            assert value(s, "vsmd_spawn_step_total", step=step) == after[step]["count"], step
        for step in timed:
            assert value(s, "vsmd_spawn_step_seconds_total", step=step) > 0, step
            assert value(s, "vsmd_spawn_step_cpu_seconds_total", step=step) > 0, step
