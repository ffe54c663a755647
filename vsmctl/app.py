"""vsmctl: spawn, list, show and terminate VSMs of a running vsmd, message them, and read and
set their state and policy.

Exit codes: 0 ok, 1 the daemon refused (its code and message on stderr), 2 usage,
3 no daemon answers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from vsmctl import agents_cmd, mcp_cmds, messaging, state_cmds, submit_cmd, top
from vsmctl.client import DEFAULT_TIMEOUT, VsmClient
from vsmctl.complete import complete_vsm_id
from vsmctl.options import Broker, Json, Namespace, Timeout, parse_pairs
from vsmctl.options import call as _call
from vsmctl.options import print_json as _json
from vsmd.errors import VsmdError
from vsmd.protocol import ListVsms, Policy, SpawnConfig, VsmInfo

app = typer.Typer(
    no_args_is_help=True,
    help="Control a running vsmd: spawn, list, show and terminate VSMs, message them, and read "
    "and set their state and policy.",
)


def _settings(pairs: list[str], config_file: Path | None) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = orjson.loads(config_file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {config_file} as JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{config_file} must hold a JSON object")
        settings.update(loaded)
    settings.update(parse_pairs(pairs, "--set"))
    return settings


Opt = typer.Option
Id = Annotated[str, typer.Argument(metavar="ID", autocompletion=complete_vsm_id)]


def _print_version(value: bool) -> None:
    if value:
        from vsmd import __version__

        typer.echo(f"vsmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        Opt("--version", is_eager=True, callback=_print_version, help="Print the version."),
    ] = False,
    credentials: Annotated[
        str | None,
        Opt(
            "--credentials",
            envvar="VSM_CREDENTIALS",
            help="Operator or viewer credentials file of a secure vsmd (docs/security.md).",
        ),
    ] = None,
) -> None:
    """The options every command shares come after the command's name (--credentials before)."""
    if credentials:
        # Every client this process makes reads it there (vsmctl.client.VsmClient).
        os.environ["VSM_CREDENTIALS"] = credentials


@app.command()
def spawn(
    parent: Annotated[
        str | None, Opt(help="Id of the parent VSM.", autocompletion=complete_vsm_id)
    ] = None,
    name: Annotated[str | None, Opt(help="Name, unique among siblings.")] = None,
    agent: Annotated[str | None, Opt(help="Agent type.")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="Agent setting KEY=VALUE.")] = None,
    config: Annotated[Path | None, Opt(help="JSON file of agent settings.")] = None,
    restart: Annotated[str | None, Opt(help="permanent, transient or temporary.")] = None,
    on_parent_exit: Annotated[str | None, Opt(help="terminate or abandon.")] = None,
    on_child_failure: Annotated[str | None, Opt(help="ignore, terminate or restart.")] = None,
    memory_mb: Annotated[int | None, Opt(min=1, help="Memory quota (RSS, MiB).")] = None,
    cpu_percent: Annotated[float | None, Opt(min=0.1, help="CPU quota (% of a core).")] = None,
    max_fds: Annotated[int | None, Opt(min=1, help="Open files quota.")] = None,
    max_procs: Annotated[int | None, Opt(min=1, help="Child processes quota.")] = None,
    quota_action: Annotated[str | None, Opt(help="warn, restart or terminate.")] = None,
    max_children: Annotated[int | None, Opt(min=1, help="Most direct children.")] = None,
    budget_descendants: Annotated[
        int | None, Opt(min=0, help="Most VSMs below this one (carved from the parent's).")
    ] = None,
    budget_memory_mb: Annotated[
        int | None, Opt(min=1, help="Memory quotas of this subtree, MiB (from the parent's).")
    ] = None,
    capabilities: Annotated[
        str | None,
        Opt(help="Capabilities to grant, comma-separated (default: the agent type's)."),
    ] = None,
    wait_throttle: Annotated[
        bool, Opt("--wait-throttle", help="On THROTTLED, wait retry_after and try again.")
    ] = False,
    quiet: Annotated[bool, Opt("-q", "--quiet", help="Print the id alone.")] = False,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Spawn a VSM (under --parent, or at the top level); returns once it is ready."""
    try:
        policy = Policy(
            restart=restart,
            on_parent_exit=on_parent_exit,
            on_child_failure=on_child_failure,
            memory_mb=memory_mb,
            cpu_percent=cpu_percent,
            max_fds=max_fds,
            max_procs=max_procs,
            quota_action=quota_action,
            max_children=max_children,
            budget_descendants=budget_descendants,
            budget_memory_mb=budget_memory_mb,
            capabilities=None
            if capabilities is None
            else [c.strip() for c in capabilities.split(",") if c.strip()],
        ).validate()
    except VsmdError as err:
        raise typer.BadParameter(err.message) from None
    cfg = SpawnConfig(name=name, agent=agent, settings=_settings(set_ or [], config), policy=policy)
    info = _call(
        broker, namespace, timeout, lambda c: c.spawn_recursive_vsm(parent, cfg, wait_throttle)
    )
    if json:
        _json(info.to_dict())
    elif quiet:
        typer.echo(info.id)
    else:
        typer.echo(f"spawned {info.id} ({info.path}, pid {info.pid})")


@app.command()
def events(
    follow: Annotated[bool, Opt("--follow", "-f", help="Keep printing new events.")] = False,
    since: Annotated[int, Opt(min=0, help="Only events after this sequence number.")] = 0,
    json: Annotated[bool, Opt("--json", help="One JSON object per line.")] = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Supervision events: exits, restarts, quota actions, throttles, escalations."""

    def show(event: dict[str, Any]) -> None:
        if json:
            sys.stdout.write(orjson.dumps(event).decode() + "\n")
        else:
            from vsmctl.render import print_event  # rich only when a person reads it

            print_event(event)
        sys.stdout.flush()

    def run(c: VsmClient) -> None:
        if not follow:
            for event in c.events(since)[1]:
                show(event)
            return
        for event in c.follow_events(since):
            show(event)

    with contextlib.suppress(KeyboardInterrupt):
        _call(broker, namespace, timeout, run)


@app.command("list")
def list_(
    parent: Annotated[
        str | None, Opt(help="Only below this VSM.", autocompletion=complete_vsm_id)
    ] = None,
    tree: Annotated[bool, typer.Option("--tree", help="Draw the hierarchy.")] = False,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """List VSMs."""
    if json:  # straight from the reply: no objects to build for a script
        _json(
            _call(
                broker,
                namespace,
                timeout,
                lambda c: c.request(ListVsms(parent=parent, recursive=True)),
            )
        )
        return
    from vsmctl.render import print_table, print_tree  # rich only when a person reads it

    infos = _call(broker, namespace, timeout, lambda c: c.list_child_vsms(parent, True))
    if tree:
        print_tree(infos, parent)
    else:
        print_table(infos)


@app.command()
def show(
    vsm_id: Id,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Show one VSM."""
    info: VsmInfo = _call(broker, namespace, timeout, lambda c: c.show(vsm_id))
    if json:
        _json(info.to_dict())
    else:
        from vsmctl.render import print_info  # rich only when a person reads it

        print_info(info)


@app.command()
def terminate(
    vsm_id: Id,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.01,
            max=3600,
            help="Seconds each VSM gets to stop gracefully before SIGKILL (default: the daemon's "
            "stop_timeout); vsmctl waits for the whole subtree accordingly.",
        ),
    ] = None,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
) -> None:
    """Terminate a VSM and its whole subtree, leaves first."""
    ids = _call(
        broker, namespace, DEFAULT_TIMEOUT, lambda c: c.terminate_child_vsm(vsm_id, timeout)
    )
    if json:
        _json({"terminated": ids})
    else:
        typer.echo(f"terminated {len(ids)} VSM(s): {' '.join(ids)}")


@app.command()
def ping(
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Check that vsmd answers."""
    result = _call(broker, namespace, timeout, lambda c: c.ping())
    if json:
        _json(result)
    else:
        typer.echo(
            f"vsmd {result['version']} answers on namespace {result['namespace']} "
            f"(pid {result['pid']}, {result['vsms']} VSMs, up {result['uptime']:.0f} s)"
        )


# After the commands above, so that help lists them first.
messaging.register(app)
submit_cmd.register(app)
state_cmds.register(app)
top.register(app)
mcp_cmds.register(app)
agents_cmd.register(app)


def main() -> None:
    app()
