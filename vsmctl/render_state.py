"""Human output of vsmctl state, policy and watch.

Values come from agents: they go out as rich ``Text``, never as markup, so a value such as
``[bold]`` is printed as it is.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text


def _console() -> Console:
    # Piped into a file or grep, rich would wrap at 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=250)


def text(value: Any) -> str:
    """A value as a person reads it: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def pairs(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={text(v)}" for k, v in sorted(values.items())) or "-"


def _table() -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    return table


def identity_line(view: Mapping[str, Any]) -> str:
    ident = view.get("identity") or {}
    parts = [f"id {view['id']}"]
    for key in ("name", "depth", "parent"):
        if ident.get(key) is not None:
            parts.append(f"{key} {text(ident[key])}")
    if ident.get("purpose"):
        parts.append(f"purpose {text(ident['purpose'])}")
    return f"{view['path']} ({', '.join(parts)})"


def subtree_line(summary: Any) -> str:
    """The ``subtree`` metric: how many VSMs, the worst health among them, summed counters."""
    if not isinstance(summary, dict):
        return "-"
    line = f"{summary.get('count', '?')} VSM(s), worst health {summary.get('worst_health', '?')}"
    counters = summary.get("counters") or {}
    return f"{line}, counters {pairs(counters)}" if counters else line


def print_state(view: Mapping[str, Any]) -> None:
    metrics = dict(view.get("metrics") or {})
    summary = metrics.pop("subtree", None)
    table = _table()
    table.add_row("vsm", Text(identity_line(view)))
    table.add_row("policy", Text(pairs(view.get("effective_policy") or {})))
    table.add_row("own policy", Text(pairs(view.get("policy") or {})))
    table.add_row("metrics", Text(pairs(metrics)))
    table.add_row("subtree", Text(subtree_line(summary)))
    data = view.get("data") or {}
    if not data:
        table.add_row("data", "-")
    for n, key in enumerate(sorted(data)):
        table.add_row("data" if n == 0 else "", Text(f"{key} = {text(data[key])}"))
    table.add_row("children", Text(" ".join(view.get("children") or []) or "-"))
    _console().print(table)


def print_policy(view: Mapping[str, Any]) -> None:
    table = _table()
    table.add_row("vsm", Text(f"{view['path']} ({view['id']})"))
    table.add_row("own", Text(pairs(view.get("own") or {})))
    table.add_row("effective", Text(pairs(view.get("effective") or {})))
    for n, layer in enumerate(view.get("layers") or []):
        where = f"{layer['path']} ({layer['id']})"
        table.add_row("layers" if n == 0 else "", Text(f"{where}: {pairs(layer['policy'])}"))
    _console().print(table)


def change_lines(delta: Mapping[str, Any]) -> list[str]:
    """One line per changed key: ``HH:MM:SS.mmm path section key = value`` (or ``deleted``)."""
    when = datetime.datetime.fromtimestamp(delta["time"]).strftime("%H:%M:%S.%f")[:-3]
    lines = []
    for change in delta["changes"]:
        head = f"{when} {delta['path']} {change['section']} {change['key']}"
        if change.get("deleted"):
            lines.append(f"{head} deleted")
        else:
            lines.append(f"{head} = {text(change.get('value'))}")
    return lines
