"""How vsmctl top draws a frame (rich): a header, the table of VSMs, the latest alerts."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from vsmctl.top import ALERTS_SHOWN, Snapshot, SortKey, age, num, sort_rows
from vsmd.protocol import VsmInfo

_STATUS_STYLE = {"running": "green", "failed": "red", "exited": "dim"}


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def _header(snap: Snapshot, sort: SortKey, reverse: bool, live: bool) -> Text:
    d = snap.daemon
    counts: dict[str, int] = {}
    for info in snap.infos:
        counts[info.status] = counts.get(info.status, 0) + 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    rss = sum(max(num(i, "rss_mb"), 0.0) for i in snap.infos)
    cpu = sum(max(num(i, "cpu_percent"), 0.0) for i in snap.infos)
    clock = datetime.datetime.fromtimestamp(snap.taken).strftime("%H:%M:%S")
    text = Text.assemble(
        ("vsmd top", "bold"),
        f" - namespace {d.get('namespace', '?')}, vsmd {d.get('version', '?')} pid "
        f"{d.get('pid', '?')} up {_uptime(float(d.get('uptime', 0)))} - {clock}\n",
        f"{len(snap.infos)} VSMs: {statuses} - rss {rss:.1f} MiB, cpu {cpu:.1f}% - sorted by "
        f"{sort.value}{' (reversed)' if reverse else ''}{' - Ctrl-C quits' if live else ''}",
    )
    if snap.error:
        text.append(f"\n{snap.error} (retrying; the figures above are stale)", style="bold red")
    return text


def _metric(info: VsmInfo, key: str) -> str:
    value = info.metrics.get(key)
    return "-" if value is None else f"{value:.1f}"


def _table(rows: list[VsmInfo], snap: Snapshot, sort: SortKey) -> Table:
    table = Table(box=None, header_style="bold reverse", pad_edge=False)
    for col, justify in _COLUMNS:
        table.add_column(col, justify=justify, no_wrap=True)
    for i in rows:
        # In tree order the name is indented by depth; sorted otherwise, the path says where.
        where = "  " * (i.depth - 1) + i.name if sort is SortKey.tree else i.path
        table.add_row(
            i.id,
            where,
            str(i.pid or "-"),
            Text(i.status, style=_STATUS_STYLE.get(i.status, "yellow")),
            str(i.restarts),
            _metric(i, "rss_mb"),
            _metric(i, "cpu_percent"),
            _metric(i, "msg_in"),
            _metric(i, "msg_out"),
            Text(snap.alerts.for_vsm(i.id, snap.taken), style="red"),
        )
    return table


_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("ID", "left"),
    ("VSM", "left"),
    ("PID", "right"),
    ("STATUS", "left"),
    ("RESTARTS", "right"),
    ("RSS MiB", "right"),
    ("CPU %", "right"),
    ("IN/s", "right"),
    ("OUT/s", "right"),
    ("ALERT", "left"),
)


def _alert_lines(snap: Snapshot) -> Text:
    # One line per alert, cut at the screen's edge: a wrapped line would push the table off.
    text = Text("Alerts", style="bold", no_wrap=True, overflow="ellipsis")
    if not snap.alerts.recent:
        return text.append(": none", style="dim")
    for event in reversed(snap.alerts.recent):  # newest first
        when = age(snap.taken - float(event.get("time", snap.taken)))
        text.append(f"\n  {when:>8}  ", style="dim")
        text.append(str(event.get("kind")), style="red")
        text.append(f"  {event.get('message', '')}")
    return text


def render(
    snap: Snapshot, sort: SortKey, reverse: bool, height: int | None = None
) -> RenderableType:
    """One frame; with ``height``, the table is cut to fit the screen."""
    alert_lines = 1 + min(len(snap.alerts.recent), ALERTS_SHOWN)
    header_lines = 3 if snap.error else 2
    rows = sort_rows(snap.infos, sort, reverse)
    # header, a blank line, the table's header, the line on hidden rows, a blank line, alerts
    max_rows = None if height is None else max(height - header_lines - alert_lines - 4, 1)
    hidden = Text("")
    if max_rows is not None and len(rows) > max_rows:
        more = len(rows) - max_rows
        rows = rows[:max_rows]
        hidden = Text(f"{more} more VSM(s) below: a taller terminal or --parent shows them")
    return Group(
        _header(snap, sort, reverse, height is not None),
        Text(""),
        _table(rows, snap, sort),
        hidden,
        _alert_lines(snap),
    )


def print_frame(snap: Snapshot, sort: SortKey, reverse: bool) -> None:
    """``--once``: the whole table, however long (scripts and pipes)."""
    console = Console()
    # Piped, rich would wrap at 80 columns and cut ids short (as in vsmctl list).
    (console if console.is_terminal else Console(width=250)).print(render(snap, sort, reverse))


@contextmanager
def screen(sort: SortKey, reverse: bool) -> Iterator[Callable[[Snapshot], None]]:
    """A function that draws a frame in place, cut to the terminal's height."""
    from rich.live import Live

    console = Console()
    # The alternate screen, as top(1) uses: on exit the terminal shows what it showed before.
    with Live(console=console, screen=console.is_terminal, auto_refresh=False) as live:

        def draw(snap: Snapshot) -> None:
            live.update(render(snap, sort, reverse, console.size.height), refresh=True)

        yield draw
