"""vsmctl submit: a task to a worker's queue, from the operator."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from vsmctl.client import DEFAULT_TIMEOUT
from vsmctl.complete import complete_vsm_id
from vsmctl.mcp_cmds import _args as parse_args
from vsmctl.options import Broker, Json, Namespace, call, print_json

Opt = typer.Option


def submit(
    vsm_id: Annotated[
        str, typer.Argument(metavar="ID", help="Id of the worker.", autocompletion=complete_vsm_id)
    ],
    task: Annotated[str, typer.Argument(metavar="TASK", help="The task's registered name.")],
    arg: Annotated[
        list[str] | None, Opt("--arg", help="Argument KEY=VALUE (JSON or text).")
    ] = None,
    wait: Annotated[bool, Opt("--wait", help="Wait for the task's result and print it.")] = False,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Annotated[
        float,
        Opt(
            "--timeout",
            envvar="VSM_TIMEOUT",
            min=0.1,
            help="Seconds to wait for the broker, and with --wait for the result.",
        ),
    ] = DEFAULT_TIMEOUT,
) -> None:
    """Put a task on a worker's queue; with --wait, print its result. Without --wait it returns
    once the broker holds the task (it runs even if this command is gone by then)."""
    args = parse_args(arg or [])

    def run(client: Any) -> Any:
        from vsmctl.tasks import TaskSubmitter

        return TaskSubmitter(client).submit(vsm_id, task, args, wait, timeout)

    result = call(broker, namespace, timeout, run)
    if json:
        print_json(result)
    elif not wait:
        typer.echo(f"submitted {task} to {vsm_id} (task {result['submitted']})")
    else:
        from vsmctl.render import print_result  # rich only when a person reads it

        print_result(result)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command()(submit)
