"""Human output of vsmctl (rich tables and trees)."""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from vsmd.protocol import VsmInfo

_STATUS_STYLE = {
    "running": "green",
    "unreachable": "yellow",
    "starting": "yellow",
    "backoff": "yellow",
    "stopping": "yellow",
    "exited": "dim",
    "failed": "red",
}
_COLUMNS = (
    "ID",
    "NAME",
    "PATH",
    "DEPTH",
    "PID",
    "STATUS",
    "AGENT",
    "RESTARTS",
    "CHILDREN",
    "RSS MiB",
    "CPU %",
)


def _console() -> Console:
    # Piped into a file or grep, rich would wrap at 80 columns and cut ids short.
    console = Console()
    return console if console.is_terminal else Console(width=250)


def _status(info: VsmInfo) -> str:
    style = _STATUS_STYLE.get(info.status, "")
    return f"[{style}]{info.status}[/]" if style else info.status


def _metric(info: VsmInfo, key: str) -> str:
    value = info.metrics.get(key)
    return "-" if value is None else f"{value:g}"


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds")


def print_table(infos: list[VsmInfo]) -> None:
    table = Table(box=None, header_style="bold")
    for col in _COLUMNS:
        table.add_column(col)
    for i in infos:
        table.add_row(
            i.id,
            i.name,
            i.path,
            str(i.depth),
            str(i.pid or "-"),
            _status(i),
            i.agent,
            str(i.restarts),
            str(len(i.children)),
            _metric(i, "rss_mb"),
            _metric(i, "cpu_percent"),
        )
    _console().print(table)


def print_tree(infos: list[VsmInfo], parent: str | None) -> None:
    root = Tree(f"[bold]{parent or 'vsmd'}[/]")
    nodes: dict[str | None, Tree] = {parent: root}
    for i in infos:  # parents come before their children
        holder = nodes.get(i.parent, root)
        nodes[i.id] = holder.add(f"{i.name} [dim]{i.id}[/] pid {i.pid or '-'} {_status(i)}")
    _console().print(root)


def print_info(info: VsmInfo) -> None:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "id": info.id,
        "name": info.name,
        "path": info.path,
        "parent": info.parent or "-",
        "depth": str(info.depth),
        "pid": str(info.pid or "-"),
        "status": _status(info),
        "agent": info.agent,
        "config": str(info.config),
        "started": _when(info.started_at),
        "restarts": str(info.restarts),
        "last exit": info.last_exit or "-",
        "last reason": info.last_reason or "-",
        "next restart": _when(info.next_restart),
        "policy": " ".join(f"{k}={v}" for k, v in info.policy.items()) or "defaults",
        "usage": " ".join(f"{k}={v}" for k, v in info.metrics.items()) or "-",
        "children": " ".join(info.children) or "-",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    _console().print(table)


def print_event(event: dict[str, Any]) -> None:
    stamp = datetime.datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S.%f")[:-3]
    Console(highlight=False).print(
        f"[dim]{stamp} #{event['seq']}[/] [bold]{event['kind']}[/] {event['message']}",
        markup=True,
    )


def print_result(result: Any) -> None:
    """An agent's answer: an object as one key per line, anything else as JSON."""
    import orjson

    def text(value: Any) -> str:
        return value if isinstance(value, str) else orjson.dumps(value).decode()

    if not isinstance(result, dict) or not result:
        Console(highlight=False).print(text(result), markup=False)
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.items():
        table.add_row(str(key), text(value))
    _console().print(table)
