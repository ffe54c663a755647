"""Prometheus metrics: an HTTP endpoint served from its own thread, collected at scrape time.

The loop thread owns the registry and every counter. Once a second it publishes an immutable
snapshot (a plain dict, swapped in by one assignment); the HTTP thread only ever reads the last
snapshot, so a scrape never walks a registry the loop is changing and the hot path updates
nothing but a few integers.
"""

from __future__ import annotations

import bisect
import collections
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from vsmd.config import parse_listen
from vsmd.errors import ConfigError

if TYPE_CHECKING:
    from vsmd.daemon.service import Daemon

log = logging.getLogger("vsmd.metrics")

SPAWN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ADMIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
QUOTA_PREFIX = "quota_"
SNAPSHOT_EVERY = 1.0  # seconds; a scrape shows the state of the last snapshot


class Histogram:
    """Bucket counts kept by the loop thread; ``frozen`` copies them for a snapshot."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def frozen(self) -> tuple[list[tuple[str, float]], float]:
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets, self.total


def build_snapshot(daemon: Daemon) -> dict[str, Any]:
    """Everything a scrape shows, copied on the loop thread."""
    by_status: collections.Counter[tuple[str, int]] = collections.Counter()
    sampled = []
    for rec in daemon.manager.registry.all():
        by_status[(str(rec.status), rec.depth)] += 1
        if rec.metrics:
            sampled.append(
                (rec.metrics.get("rss_mb", 0.0), rec.metrics.get("cpu_percent", 0.0), rec)
            )
    sampled.sort(key=lambda s: s[0], reverse=True)
    top = [(r.id, r.path, rss, cpu) for rss, cpu, r in sampled[: daemon.config.metrics_top_n]]
    kinds = dict(daemon.events_log.counts)
    return {
        "vsms": dict(by_status),
        "events": kinds,
        "refusals": dict(daemon.control.refusals),
        "unauthorized": dict(daemon.control.violations.total if daemon.control.violations else {}),
        "spawn_ready": daemon.manager.spawn_ready.frozen(),
        "admin": {cmd: h.frozen() for cmd, h in daemon.control.latency.items()},
        "reconnects": daemon.reconnects,
        "spawns": daemon.manager.spawned,
        "steps": daemon.manager.steps.snapshot(),
        "top": top,
    }


class DaemonCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: Mapping[str, Any] | None = None  # replaced whole, never changed

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        vsms = GaugeMetricFamily(
            "vsmd_vsms", "VSMs by status and depth", labels=["status", "depth"]
        )
        for (status, depth), n in sorted(snap["vsms"].items()):
            vsms.add_metric([status, str(depth)], n)
        yield vsms
        yield CounterMetricFamily("vsmd_spawns", "New VSMs that reported ready", snap["spawns"])
        yield from _event_counters(snap["events"], snap["refusals"])
        buckets, total = snap["spawn_ready"]
        yield HistogramMetricFamily(
            "vsmd_spawn_ready_seconds",
            "From the fork request to the VSM's ready report",
            buckets=buckets,
            sum_value=total,
        )
        admin = HistogramMetricFamily(
            "vsmd_admin_request_seconds",
            "Time to answer an admin request (synchronous answers), by command",
            labels=["command"],
        )
        for cmd, (cmd_buckets, cmd_total) in sorted(snap["admin"].items()):
            admin.add_metric([cmd], cmd_buckets, cmd_total)
        yield admin
        yield from _step_counters(snap["steps"])
        yield CounterMetricFamily(
            "vsmd_bus_reconnects", "Reconnects of the daemon to the broker", snap["reconnects"]
        )
        unauthorized = CounterMetricFamily(
            "vsmd_unauthorized",
            "Requests refused as outside the sender's authority, by sender (vsm or client)",
            labels=["sender"],
        )
        for sender, n in sorted(snap["unauthorized"].items()):
            unauthorized.add_metric([sender], n)
        yield unauthorized
        yield from _top(snap["top"])


def _event_counters(events: dict[str, int], refusals: dict[str, int]) -> Iterator[Metric]:
    kinds = CounterMetricFamily("vsmd_events", "Supervision events by kind", labels=["kind"])
    quota = CounterMetricFamily(
        "vsmd_quota_actions", "Quota actions taken, by action", labels=["action"]
    )
    for kind, n in sorted(events.items()):
        kinds.add_metric([kind], n)
        if kind.startswith(QUOTA_PREFIX) and kind != "quota_exceeded":
            quota.add_metric([kind.removeprefix(QUOTA_PREFIX)], n)
    yield kinds
    yield quota
    yield CounterMetricFamily("vsmd_restarts", "VSMs restarted", events.get("restarted", 0))
    yield CounterMetricFamily("vsmd_terminations", "VSMs terminated", events.get("terminated", 0))
    yield CounterMetricFamily(
        "vsmd_throttle_refusals", "Spawns refused as THROTTLED", events.get("throttled", 0)
    )
    refused = CounterMetricFamily(
        "vsmd_spawn_refusals", "Spawns refused, by error code", labels=["code"]
    )
    for code, n in sorted(refusals.items()):
        refused.add_metric([code], n)
    yield refused


def _step_counters(steps: dict[str, dict[str, float]]) -> Iterator[Metric]:
    seconds = CounterMetricFamily(
        "vsmd_spawn_step_seconds",
        "Wall time the daemon's loop spent in each step of a spawn",
        labels=["step"],
    )
    cpu = CounterMetricFamily(
        "vsmd_spawn_step_cpu_seconds",
        "CPU time the daemon's loop thread spent in each step of a spawn",
        labels=["step"],
    )
    count = CounterMetricFamily(
        "vsmd_spawn_step", "Times each step of a spawn ran on the daemon's loop", labels=["step"]
    )
    for step, figures in steps.items():
        seconds.add_metric([step], figures["seconds"])
        cpu.add_metric([step], figures["cpu_seconds"])
        count.add_metric([step], figures["count"])
    yield seconds
    yield cpu
    yield count


def _top(top: list[tuple[str, str, float, float]]) -> Iterator[Metric]:
    rss = GaugeMetricFamily(
        "vsmd_vsm_rss_bytes", "Resident memory of the largest VSMs", labels=["id", "path"]
    )
    cpu = GaugeMetricFamily(
        "vsmd_vsm_cpu_percent",
        "CPU of the largest VSMs (percent of one core)",
        labels=["id", "path"],
    )
    for vsm_id, path, rss_mb, cpu_pct in top:
        rss.add_metric([vsm_id, path], rss_mb * 2**20)
        cpu.add_metric([vsm_id, path], cpu_pct)
    yield rss
    yield cpu


class MetricsServer:
    """The endpoint's thread; ``publish`` runs on the loop thread."""

    def __init__(self, host: str, port: int) -> None:
        self.collector = DaemonCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"cannot listen for metrics on {host}:{port}: {exc}") from None
        bound = self._server.server_address
        log.info("metrics on http://%s:%d/metrics", host, bound[1])

    def publish(self, daemon: Daemon) -> None:
        self.collector.snapshot = build_snapshot(daemon)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start(daemon: Daemon) -> MetricsServer | None:
    """The endpoint, when ``metrics_listen`` asks for one, and its snapshot every second."""
    listen = parse_listen(daemon.config.metrics_listen)
    if listen is None:
        return None
    server = MetricsServer(*listen)

    def publish() -> None:
        daemon.timers.call_later(SNAPSHOT_EVERY, publish)  # first: a failure must not end it
        server.publish(daemon)

    publish()
    return server
