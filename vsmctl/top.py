"""vsmctl top: a live view of the tree, refreshed every second, like top(1) for VSMs.

A frame is built from three admin requests (ping, list, events since the last frame), so top
needs nothing the other commands do not use. The data half (``Snapshot``, ``sort_rows``,
``Alerts``) is plain Python; rich is only in the rendering.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

import typer

from vsmctl.client import VsmClient
from vsmctl.complete import complete_vsm_id
from vsmctl.options import Broker, Namespace, call
from vsmd.errors import VsmdError
from vsmd.protocol import VsmInfo

# Event kinds that mean something went wrong: what the ALERT column and the alert list show.
ALERT_KINDS = frozenset(
    {
        "spawn_failed",
        "restart_scheduled",
        "failed",
        "escalated",
        "killed",
        "quota_warn",
        "quota_restart",
        "quota_terminate",
        "oom_kill",
        "throttled",
        "quota_exceeded",
        "forkserver_failed",
        "unreachable",
    }
)
ALERT_WINDOW = 300.0  # seconds an alert stays in a VSM's ALERT column
ALERTS_SHOWN = 5
# Worst first: what an operator looks for when sorting by status.
_STATUS_RANK = {
    s: n
    for n, s in enumerate(
        ("failed", "unreachable", "backoff", "starting", "stopping", "exited", "running")
    )
}


class SortKey(StrEnum):
    tree = "tree"
    cpu = "cpu"
    rss = "rss"
    restarts = "restarts"
    msgs = "msgs"
    status = "status"
    name = "name"
    path = "path"
    id = "id"


def num(info: VsmInfo, key: str) -> float:
    value = info.metrics.get(key)
    return float(value) if isinstance(value, int | float) else -1.0


# Numbers sort largest first, as in top; text sorts A to Z. --reverse flips either.
_SORTS: dict[SortKey, tuple[Callable[[VsmInfo], Any], bool]] = {
    SortKey.cpu: (lambda i: num(i, "cpu_percent"), True),
    SortKey.rss: (lambda i: num(i, "rss_mb"), True),
    SortKey.restarts: (lambda i: i.restarts, True),
    # Messages in and out per second, as each VSM reports them every 5 s.
    SortKey.msgs: (lambda i: num(i, "msg_in") + num(i, "msg_out"), True),
    SortKey.status: (lambda i: _STATUS_RANK.get(i.status, len(_STATUS_RANK)), False),
    SortKey.name: (lambda i: i.name, False),
    SortKey.path: (lambda i: i.path, False),
    SortKey.id: (lambda i: i.id, False),
}


def sort_rows(infos: list[VsmInfo], key: SortKey, reverse: bool = False) -> list[VsmInfo]:
    """The rows in display order; ``tree`` keeps the daemon's order (parents before children)."""
    if key is SortKey.tree:
        return list(reversed(infos)) if reverse else list(infos)
    fn, descending = _SORTS[key]
    # Ties keep tree order (sorted is stable), so equal rows do not jump between frames.
    return sorted(infos, key=fn, reverse=descending != reverse)


@dataclass
class Alerts:
    """The alert events seen so far: the last few overall, and the latest per VSM."""

    last_seq: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)
    by_vsm: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, last_seq: int, events: Iterable[dict[str, Any]]) -> None:
        self.last_seq = max(self.last_seq, last_seq)
        for event in events:
            if event.get("kind") not in ALERT_KINDS:
                continue
            self.recent = [*self.recent, event][-ALERTS_SHOWN:]
            if event.get("vsm_id"):
                self.by_vsm[event["vsm_id"]] = event

    def for_vsm(self, vsm_id: str, now: float) -> str:
        event = self.by_vsm.get(vsm_id)
        if event is None or now - float(event.get("time", 0)) > ALERT_WINDOW:
            return ""
        return f"{event['kind']} {age(now - float(event['time']))}"


def age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


@dataclass
class Snapshot:
    """What one frame shows."""

    daemon: dict[str, Any]
    infos: list[VsmInfo]
    alerts: Alerts
    taken: float
    error: str = ""  # set while the daemon does not answer: the last frame stays, marked stale


def take_snapshot(client: VsmClient, parent: str | None, alerts: Alerts) -> Snapshot:
    daemon = client.ping()
    infos = client.list_child_vsms(parent, True)
    alerts.add(*client.events(alerts.last_seq))
    return Snapshot(daemon, infos, alerts, time.time())


def _live(
    client: VsmClient,
    snap: Snapshot,
    frame: Callable[[VsmClient], Snapshot],
    draw: Callable[[Snapshot], None],
    interval: float,
) -> None:
    """Redraw every ``interval`` s until Ctrl-C; a daemon that stops answering is retried."""
    while True:
        draw(snap)
        time.sleep(max(interval - (time.time() - snap.taken), 0.0))
        try:
            snap = frame(client)
        except VsmdError as err:  # NoDaemon too: the daemon may come back
            client.close()  # a new connection on the next try
            snap.error = err.message
            snap.taken = time.time()


def top(
    sort: Annotated[
        SortKey, typer.Option("--sort", "-s", help="Order of the rows.", case_sensitive=False)
    ] = SortKey.tree,
    reverse: Annotated[bool, typer.Option("--reverse", "-r", help="Reverse the order.")] = False,
    parent: Annotated[
        str | None,
        typer.Option(help="Only the subtree below this VSM.", autocompletion=complete_vsm_id),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.2, max=3600, help="Seconds between frames.")
    ] = 1.0,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", envvar="VSM_TIMEOUT", min=0.1, help="Seconds to wait for each answer."
        ),
    ] = 5.0,
) -> None:
    """A live view of the tree: status, restarts, memory, CPU and alerts, every second."""
    alerts = Alerts()

    def frame(c: VsmClient) -> Snapshot:
        return take_snapshot(c, parent, alerts)

    # The first frame before the screen changes: no daemon is exit 3 with a message, as
    # with every other command.
    first = call(broker, namespace, timeout, frame)
    from vsmctl import render_top  # rich only now

    if once:
        render_top.print_frame(first, sort, reverse)
        return
    client = VsmClient(broker, namespace, timeout)
    try:
        with contextlib.suppress(KeyboardInterrupt), render_top.screen(sort, reverse) as draw:
            _live(client, first, frame, draw, interval)
    finally:
        client.close()


def register(app: typer.Typer) -> None:
    app.command()(top)
