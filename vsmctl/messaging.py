"""vsmctl send and broadcast: messages to VSMs' agents, from the operator."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer

from vsmctl.client import DEFAULT_TIMEOUT
from vsmctl.complete import complete_vsm_id
from vsmctl.options import Broker, Json, Namespace, Timeout, call, print_json, refuse
from vsmd.errors import BadJson, ProtocolError

Opt = typer.Option
Id = Annotated[
    str, typer.Argument(metavar="ID", help="Id of the VSM.", autocompletion=complete_vsm_id)
]
Kind = Annotated[str, typer.Argument(metavar="KIND", help="What the agent's handle gets as kind.")]
Body = Annotated[
    str | None, Opt("--body", help="A JSON object: what the agent's handle gets as body.")
]
Quiet = Annotated[bool, Opt("-q", "--quiet", help="Print nothing when it is done.")]
WaitTimeout = Annotated[
    float,
    Opt(
        "--timeout",
        envvar="VSM_TIMEOUT",
        min=0.1,
        help="Seconds to wait for the daemon, and with --wait for the answer.",
    ),
]


def parse_body(text: str | None) -> dict[str, Any] | None:
    """``--body``: a JSON object, or a refusal with exit code 1 like the daemon's own."""
    if text is None:
        return None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        refuse(BadJson(f"--body is not valid JSON: {exc}"))
    if not isinstance(body, dict):
        refuse(ProtocolError(f"--body must be a JSON object, got {type(body).__name__}"))
    return body


def send(
    vsm_id: Id,
    kind: Kind,
    body: Body = None,
    wait: Annotated[bool, Opt("--wait", help="Wait for the agent's answer and print it.")] = False,
    quiet: Annotated[
        bool, Opt("-q", "--quiet", help="Print nothing when it is sent (without --wait).")
    ] = False,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: WaitTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Send a message to one VSM's agent; with --wait, print its answer."""
    args = parse_body(body)
    result = call(broker, namespace, timeout, lambda c: c.send(vsm_id, kind, args, wait, timeout))
    if not wait:
        if not quiet:
            typer.echo(f"sent {kind} to {vsm_id}")
    elif json:
        print_json(result)
    else:
        from vsmctl.render import print_result  # rich only when a person reads it

        print_result(result)
    sys.stdout.flush()


def broadcast(
    vsm_id: Id,
    kind: Kind,
    body: Body = None,
    depth: Annotated[
        int | None,
        Opt(min=1, help="1: the children only; N: down N levels (default: every descendant)."),
    ] = None,
    quiet: Quiet = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Send a message to the descendants of a VSM (not to the VSM itself), as if it had
    broadcast it; no answers."""
    args = parse_body(body)
    call(broker, namespace, timeout, lambda c: c.broadcast(vsm_id, kind, args, depth))
    if not quiet:
        reach = "every descendant" if depth is None else f"{depth} level(s) down"
        typer.echo(f"broadcast {kind} below {vsm_id} ({reach})")


def register(app: typer.Typer) -> None:
    app.command()(send)
    app.command()(broadcast)
