"""``vsmd broker setup``: what a broker of your own needs for secure mode (docs/security.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vsmd.errors import VsmdError

EXIT_CONFIG = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The broker vsmd runs on.")


@app.command()
def setup(
    broker: Annotated[str, typer.Option(help="AMQP URL of your broker (host and port).")],
    config_file: Annotated[
        Path | None, typer.Option("--config", envvar="VSM_CONFIG", help="TOML config file.")
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="Env: VSM_NAMESPACE.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Env: VSM_STATE_DIR.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where the broker's files go (default: <state-dir>/broker-setup)."),
    ] = None,
) -> None:
    """Make the signing key and passwords (kept for the daemon; the same on a second run),
    write the files the broker needs and print how to apply them. Prints no secret."""
    from vsmd.config import load_config
    from vsmd.security import broker_setup

    try:
        config = load_config(
            config_file,
            overrides={"namespace": namespace, "state_dir": state_dir, "broker_url": broker},
        )
        kept = broker_setup.make(config.state_dir, config.namespace, broker)
        target = out or config.state_dir / "broker-setup"
        setup_ = kept.setup(config.max_total)
        broker_setup.write_broker_files(target, setup_)
    except VsmdError as err:
        typer.echo(f"vsmd: {err.message}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except OSError as exc:
        typer.echo(f"vsmd: cannot write the setup: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(broker_setup.instructions(target, setup_), nl=False)
