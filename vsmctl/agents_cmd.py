"""vsmctl agents: the agent types the daemon can spawn, with their settings and capabilities."""

from __future__ import annotations

from typing import Any

import typer

from vsmctl.client import DEFAULT_TIMEOUT
from vsmctl.options import Broker, Json, Namespace, Timeout, call, print_json
from vsmd.protocol import ListAgents


def _setting(name: str, schema: dict[str, Any], required: bool) -> str:
    kind = schema.get("type") or (
        "one of " + "|".join(map(str, schema["enum"])) if "enum" in schema else "any"
    )
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "maximum") if k in schema]
    extra = f", {', '.join(bounds)}" if bounds else ""
    return f"    {name} ({kind}{extra}){' required' if required else ''}"


def agents(
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """List the agent types the daemon knows: their settings (config schema) and capabilities."""
    listed: list[dict[str, Any]] = call(
        broker, namespace, timeout, lambda c: c.request(ListAgents())
    )
    if json:
        print_json(listed)
        return
    for t in listed:
        typer.echo(f"{t['name']}: {t['description'] or '(no description)'}")
        typer.echo(f"  capabilities: {', '.join(t['capabilities']) or 'none'}")
        schema = t["config_schema"]
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        if props:
            typer.echo("  settings:")
            for name, sub in props.items():
                typer.echo(_setting(name, sub if isinstance(sub, dict) else {}, name in required))
        elif schema.get("additionalProperties") is False:
            typer.echo("  settings: none")
        else:
            typer.echo("  settings: any")


def register(app: typer.Typer) -> None:
    app.command("agents")(agents)
