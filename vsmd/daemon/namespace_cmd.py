"""``vsmd namespace remove``: take a namespace's queues and exchange off the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vsmd.errors import BrokerError, ConfigError, VsmdError

EXIT_CONFIG = 2
EXIT_NO_BROKER = 3

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="What a namespace keeps on the broker."
)


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help="The namespace to remove.")],
    config_file: Annotated[
        Path | None,
        typer.Option("--config", envvar="VSM_CONFIG", help="TOML config file (its broker_url)."),
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="AMQP URL of the broker. Env: VSM_BROKER_URL.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Remove it even while a daemon consumes its queues.")
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The daemon's state directory: its journal names the workers' task queues. "
            "Env: VSM_STATE_DIR.",
        ),
    ] = None,
) -> None:
    """Delete every queue and exchange of NAME, and the task queues of the workers in the
    daemon's journal (its state directory); refused while a daemon answers on it."""
    from vsmd.bus.connection import redact
    from vsmd.bus.namespace import remove_namespace
    from vsmd.config import load_config

    try:
        config = load_config(
            config_file,
            overrides={"broker_url": broker, "namespace": name, "state_dir": state_dir},
        )
        url = config.broker_url
        if url in ("embedded", "auto", "docker"):
            # A private node holds nothing but its own daemon's namespace, and that daemon
            # cleans up at its stop; a URL says which shared broker to tidy.
            raise ConfigError(f"namespace remove needs an AMQP URL, not {url!r} (--broker)")
    except VsmdError as err:
        typer.echo(f"vsmd: {err.message}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        from vsmd.daemon.journal import journaled_ids

        ids = journaled_ids(config.state_dir, config.namespace)
        removed = remove_namespace(url, name, force=force, vsm_ids=ids)
    except BrokerError as err:
        typer.echo(f"vsmd: {err.message}", err=True)
        raise typer.Exit(EXIT_NO_BROKER) from None
    except VsmdError as err:
        typer.echo(f"vsmd: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None
    if removed:
        typer.echo(f"removed {', '.join(removed)} from {redact(url)}")
    else:
        typer.echo(f"namespace {name} has nothing on {redact(url)}")
