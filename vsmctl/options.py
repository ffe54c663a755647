"""What every vsmctl command shares: the common options, exit codes and error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer

from vsmctl.client import VsmClient
from vsmd.errors import NoDaemon, Unauthorized, VsmdError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_UNAUTHORIZED = 0, 1, 2, 3, 4

Broker = Annotated[
    str | None, typer.Option("--broker", envvar="VSM_BROKER_URL", help="AMQP URL of the broker.")
]
Namespace = Annotated[
    str | None, typer.Option("--namespace", envvar="VSM_NAMESPACE", help="The daemon's namespace.")
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", envvar="VSM_TIMEOUT", min=0.1, help="Seconds to wait for the daemon."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
T = TypeVar("T")


def refuse(err: VsmdError) -> NoReturn:
    """A refusal or error reply: ``vsmctl: CODE: message`` on stderr, exit code 1 (4 when the
    credentials do not allow it, so scripts can tell a missing right from a failure)."""
    typer.echo(f"vsmctl: {err.code}: {err.message}", err=True)
    raise typer.Exit(EXIT_UNAUTHORIZED if isinstance(err, Unauthorized) else EXIT_REFUSED)


def call(
    broker: str | None, namespace: str | None, timeout: float, fn: Callable[[VsmClient], T]
) -> T:
    """Run one client call; turn errors into a line on stderr and the documented exit code."""
    try:
        with VsmClient(broker, namespace, timeout) as client:
            return fn(client)
    except NoDaemon as err:
        typer.echo(f"vsmctl: {err.message}", err=True)
        raise typer.Exit(EXIT_NO_DAEMON) from None
    except VsmdError as err:
        refuse(err)


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def parse_pairs(pairs: list[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` options: JSON values stay typed (numbers, booleans, lists), else text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option} wants KEY=VALUE, got {pair!r}")
        try:
            out[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[key] = value
    return out
