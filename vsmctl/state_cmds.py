"""vsmctl state, policy set/show and watch: what VSMs hold, and the policy that flows down."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Annotated, Any

import orjson
import typer

from vsmctl.client import DEFAULT_TIMEOUT, VsmClient
from vsmctl.complete import complete_vsm_id
from vsmctl.options import Broker, Json, Namespace, Timeout, call, print_json, refuse
from vsmd.errors import ProtocolError

Opt = typer.Option
Id = Annotated[
    str, typer.Argument(metavar="ID", help="Id of the VSM.", autocompletion=complete_vsm_id)
]
Pairs = Annotated[
    list[str],
    typer.Argument(
        metavar="KEY=VALUE...",
        help="Policy keys: VALUE is JSON if it parses (5, true, [1,2]), else a string; "
        "KEY= or KEY=null deletes the key.",
    ),
]
# A value that starts like JSON text is meant as JSON: a typo in it must not become a string.
_JSON_STARTS = ("[", "{", '"')

policy_app = typer.Typer(
    no_args_is_help=True,
    help="Set and show policy: it flows down the tree, and each level may only tighten it.",
)


def parse_policy_value(key: str, text: str) -> Any:
    """``KEY=VALUE``'s VALUE: None (delete) when empty, JSON when it parses, else the string."""
    if text == "":
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if text.lstrip().startswith(_JSON_STARTS):
            raise ProtocolError(f"{key}={text}: the value is not valid JSON: {exc}") from None
        return text


def parse_policy_pairs(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as the values of ``policy_set``; ProtocolError when malformed."""
    if not pairs:
        raise ProtocolError("policy set: no KEY=VALUE given")
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ProtocolError(f"policy set wants KEY=VALUE, got {pair!r}")
        if key in values:
            raise ProtocolError(f"policy key {key!r} is given twice")
        values[key] = parse_policy_value(key, text)
    return values


def state(
    vsm_id: Id,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Show a VSM's state: identity, policy, metrics with its subtree's summary, data.

    As the daemon's replica holds it; the policy shown is the effective one.
    """
    view = call(broker, namespace, timeout, lambda c: c.state(vsm_id))
    if json:
        print_json(view)
    else:
        from vsmctl.render_state import print_state  # rich only when a person reads it

        print_state(view)


@policy_app.command("set")
def policy_set(
    vsm_id: Id,
    pairs: Pairs,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Set policy keys on a VSM; its whole subtree gets them at once.

    Keys: max_children, max_depth_below, memory_mb, cpu_percent (numbers of 0 or more), and
    x-<name> for the agents' own (a string, number, boolean or list).
    """
    try:
        values = parse_policy_pairs(pairs)
    except ProtocolError as err:
        refuse(err)
    view = call(broker, namespace, timeout, lambda c: c.policy_set(vsm_id, values))
    if json:
        print_json(view)
        return
    from vsmctl.render_state import print_policy, text  # rich only when a person reads it

    said = [f"{k}={text(v)}" if v is not None else f"{k} deleted" for k, v in values.items()]
    typer.echo(f"policy of {view['path']} ({view['id']}): {', '.join(said)}")
    print_policy(view)


@policy_app.command("show")
def policy_show(
    vsm_id: Id,
    json: Json = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Show a VSM's own policy, its effective policy and the layers, the root first."""
    view = call(broker, namespace, timeout, lambda c: c.policy_show(vsm_id))
    if json:
        print_json(view)
    else:
        from vsmctl.render_state import print_policy  # rich only when a person reads it

        print_policy(view)


def watch(
    vsm_id: Id,
    count: Annotated[int | None, Opt("--count", min=1, help="Stop after N updates.")] = None,
    json: Annotated[bool, Opt("--json", help="One JSON object per update, a line each.")] = False,
    broker: Broker = None,
    namespace: Namespace = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Print a VSM's state changes as it makes them, until Ctrl-C (or --count updates)."""

    # Ctrl-C sets a flag the loop reads between its 1 s waits. A KeyboardInterrupt raised
    # inside pika's I/O could leave the connection mid-read, and the unsubscribe and close
    # that follow then waited for an answer that never came.
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())

    def run(c: VsmClient) -> None:
        for seen, delta in enumerate(c.watch(vsm_id, stopped.is_set), 1):
            show(delta)
            if count is not None and seen >= count:
                return

    def show(delta: dict[str, Any]) -> None:
        if json:
            sys.stdout.write(orjson.dumps(delta).decode() + "\n")
        else:
            from vsmctl.render_state import change_lines

            sys.stdout.writelines(line + "\n" for line in change_lines(delta))
        sys.stdout.flush()  # a script reading the pipe sees each update when it happens

    with contextlib.suppress(KeyboardInterrupt):
        call(broker, namespace, timeout, run)


def register(app: typer.Typer) -> None:
    app.command()(state)
    app.add_typer(policy_app, name="policy")
    app.command()(watch)
