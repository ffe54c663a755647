"""vsmctl mcp, tools, call and resources: a VSM's MCP server from the shell and from MCP hosts."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer

from vsmctl.client import DEFAULT_TIMEOUT
from vsmctl.complete import complete_vsm_id
from vsmctl.options import (
    Broker,
    Json,
    Namespace,
    Timeout,
    call,
    parse_pairs,
    print_json,
    refuse,
)
from vsmd.errors import VsmdError, from_dict

Opt = typer.Option
Target = Annotated[
    str,
    typer.Argument(metavar="ID", help="Id or path of the VSM.", autocompletion=complete_vsm_id),
]


def _where(broker: str | None, namespace: str | None, timeout: float) -> tuple[str, str]:
    """Broker URL and namespace as every vsmctl command finds them (flags, env, credentials)."""
    client = call(broker, namespace, timeout, lambda c: c)  # resolves; connects to nothing
    return client.broker_url, client.namespace


def _session(
    broker: str | None, namespace: str | None, timeout: float, target: str, fn: Any
) -> Any:
    # Imported here, not at the top: the SDK is for these commands only (see mcp_bridge).
    from vsmctl import mcp_bridge

    url, ns = _where(broker, namespace, timeout)
    try:
        return mcp_bridge.run_session(url, ns, target, timeout, fn)
    except VsmdError as err:
        refuse(err)


def _args(pairs: list[str]) -> dict[str, Any]:
    return parse_pairs(pairs, "--arg")


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def mcp(
    target: Target,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Serve the VSM's MCP server on stdio: the command an MCP host runs (see README)."""
    from vsmctl import mcp_bridge

    url, ns = _where(broker, namespace, timeout)
    raise typer.Exit(mcp_bridge.bridge(url, ns, target, timeout))


def tools(
    target: Target,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """List the VSM's MCP tools."""
    from vsmctl import mcp_bridge

    listed = _session(broker, namespace, timeout, target, mcp_bridge.list_tools)
    if json:
        print_json(listed)
        return
    for t in listed:
        mark = " (read-only)" if t["read_only"] else ""
        typer.echo(f"{t['name']}{mark}: {t['description']}")


def call_tool(
    target: Target,
    tool: Annotated[str, typer.Argument(metavar="TOOL", help="The tool's name.")],
    arg: Annotated[
        list[str] | None, Opt("--arg", help="Argument KEY=VALUE (JSON or text).")
    ] = None,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Call one of the VSM's MCP tools; exit 1 when the tool reports an error."""
    from vsmctl import mcp_bridge

    result = _session(
        broker, namespace, timeout, target, mcp_bridge.call_tool(tool, _args(arg or []))
    )
    texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
    if result.is_error:
        err = (result.structured_content or {}).get("error")
        if isinstance(err, dict):  # a vsmd error: its code and exit code, as everywhere
            refuse(from_dict(err))
        typer.echo(f"vsmctl: {tool} failed: {' '.join(texts)}", err=True)
        raise typer.Exit(1)
    if json:
        print_json(result.structured_content if result.structured_content is not None else texts)
        return
    sys.stdout.write("\n".join(texts) + "\n")


def resources(
    target: Target,
    read: Annotated[str | None, Opt("--read", metavar="URI", help="Print this resource.")] = None,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """List the VSM's MCP resources, or print one with --read URI."""
    from vsmctl import mcp_bridge

    if read is not None:
        texts = _session(broker, namespace, timeout, target, mcp_bridge.read_resource(read))
        if json:
            print_json([_json_or_text(t) for t in texts])
        else:
            sys.stdout.write("\n".join(texts) + "\n")
        return
    listed = _session(broker, namespace, timeout, target, mcp_bridge.list_resources)
    if json:
        print_json(listed)
        return
    for r in listed:
        typer.echo(f"{r['uri']}  {r['description']}")


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)
    app.command("tools")(tools)
    app.command("call")(call_tool)
    app.command("resources")(resources)
