"""``vsmd run``: the daemon's command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vsmd.config import DEFAULT_BROKER_URL, Config, load_config
from vsmd.daemon.broker_cmd import app as broker_app
from vsmd.daemon.namespace_cmd import app as namespace_app
from vsmd.errors import BrokerError, ConfigError, VsmdError

if TYPE_CHECKING:
    from concurrent.futures import Future

    from vsmd.broker.container import DockerBroker
    from vsmd.broker.embedded import EmbeddedBroker
    from vsmd.daemon.service import Daemon
    from vsmd.protocol import VsmInfo

EXIT_CONFIG = 2
EXIT_NO_BROKER = 3

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The vsmd daemon.")
app.add_typer(namespace_app, name="namespace")
app.add_typer(broker_app, name="broker")


def _print_version(value: bool) -> None:
    if value:
        from vsmd import __version__

        typer.echo(f"vsmd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """Host recursive trees of VSM processes."""


def _resolve_broker(config: Config) -> tuple[Config, EmbeddedBroker | DockerBroker | None]:
    """Turn ``embedded`` / ``auto`` / ``docker`` into a URL, starting a private broker when
    asked to."""
    import dataclasses

    from vsmd.broker.embedded import EmbeddedBroker
    from vsmd.broker.probe import broker_answers

    url = config.broker_url
    if url == "docker":
        from vsmd.broker.container import DockerBroker

        box = DockerBroker(config.namespace)
        logging.getLogger("vsmd").info("starting a RabbitMQ container (docker)")
        box.start()
        return dataclasses.replace(config, broker_url=box.url), box
    if url == "auto":
        if broker_answers(DEFAULT_BROKER_URL):
            return dataclasses.replace(config, broker_url=DEFAULT_BROKER_URL), None
        url = "embedded"
    if url != "embedded":
        return config, None
    node = EmbeddedBroker(
        config.state_dir / "broker",
        name=f"vsmd-{config.namespace}",
        nofile=config.embedded_broker_nofile,
    )
    logging.getLogger("vsmd").info("starting an embedded RabbitMQ node (about 5 s)")
    node.start()
    return dataclasses.replace(config, broker_url=node.url), node


@app.command()
def run(
    config_file: Annotated[
        Path | None, typer.Option("--config", envvar="VSM_CONFIG", help="TOML config file.")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="AMQP URL, 'embedded' (private RabbitMQ node), 'docker' (a RabbitMQ container) "
            "or 'auto' (the default URL if it answers, else embedded). Env: VSM_BROKER_URL."
        ),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Prefix of every queue and exchange. Env: VSM_NAMESPACE.")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where vsmd keeps its state. Env: VSM_STATE_DIR.")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Spawn strategy: forkserver or exec.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    demo: Annotated[bool, typer.Option(help="Start a small demo tree (7 VSMs, 3 levels).")] = False,
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    try:
        config = load_config(
            config_file,
            overrides={
                "broker_url": broker,
                "namespace": namespace,
                "state_dir": state_dir,
                "spawn_strategy": strategy,
                "log_level": log_level,
            },
        )
    except VsmdError as err:
        typer.echo(f"vsmd: {err.message}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    from vsmd import logs

    logs.setup(config.log_level, config.log_format)
    # pika narrates every connection (and every refusal, with a traceback); vsmd logs what
    # matters in its own words.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    raise typer.Exit(_run(config, demo))


def _run(config: Config, demo: bool) -> int:
    from vsmd.daemon.service import Daemon

    node: EmbeddedBroker | DockerBroker | None = None
    trust = None
    try:
        if config.trust == "secure":
            from vsmd.daemon.secure_start import start_secure

            config, node, trust = start_secure(config)
        else:
            config, node = _resolve_broker(config)
        daemon = Daemon(config, trust)
        if demo:
            daemon.on_ready(_spawn_demo)
        return daemon.run()
    except BrokerError as err:
        typer.echo(
            f"vsmd: no broker: {err.message}. Start one (rabbitmq-server -detached), point "
            f"--broker/VSM_BROKER_URL at one, or use --broker embedded.",
            err=True,
        )
        return EXIT_NO_BROKER
    except ConfigError as err:  # a bad agent module or state directory is configuration too
        typer.echo(f"vsmd: {err.message}", err=True)
        return EXIT_CONFIG
    except VsmdError as err:
        typer.echo(f"vsmd: {err.code}: {err.message}", err=True)
        return 1
    finally:
        if node is not None:
            node.stop()


def _spawn_demo(daemon: Daemon) -> None:
    from vsmd.protocol import SpawnConfig

    log = logging.getLogger("vsmd")
    hint = f"try: vsmctl list --tree --namespace {daemon.config.namespace}"
    if daemon.manager.registry.sibling_named(None, "demo") is not None:
        log.info("the demo tree was restored from the journal; %s", hint)
        return
    fut = daemon.manager.spawn_recursive_vsm(
        None,
        SpawnConfig(
            name="demo",
            agent="tree",
            settings={"fanout": 2, "levels": 2, "leaf": "reading"},
        ),
    )

    def done(f: Future[VsmInfo]) -> None:
        err = f.exception()
        if err is None:
            log.info("demo root %s is up and spawns its own children; %s", f.result().id, hint)
        else:
            log.error("the demo tree could not start: %s", err)

    fut.add_done_callback(done)


def main() -> None:
    app()
