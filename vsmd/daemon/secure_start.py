"""Starting in secure mode: a broker set up for the boundary, checked before anything forks."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from urllib.parse import urlsplit

import pika
import pika.exceptions

from vsmd.broker.embedded import EmbeddedBroker
from vsmd.bus.connection import CONNECTION_ERRORS, close_quietly
from vsmd.bus.daemon_bus import BROKER_EVENTS
from vsmd.bus.topology import Topology
from vsmd.config import Config
from vsmd.daemon.trust import Trust, without_credentials
from vsmd.errors import ConfigError
from vsmd.security import broker_setup, credentials
from vsmd.security.fs_check import closed_to_others
from vsmd.security.identity import (
    OPERATOR_USER,
    RESOURCE_SERVER_ID,
    VHOST,
    VIEWER_USER,
)
from vsmd.security.tokens import TokenMinter

log = logging.getLogger("vsmd")


def start_secure(config: Config) -> tuple[Config, EmbeddedBroker | None, Trust]:
    """A private node set up for the boundary, or a broker of your own that `vsmd broker
    setup` prepared; checked from outside either way (ConfigError when it does not hold)."""
    _check_os_boundary(config)
    if config.broker_url not in ("auto", "embedded"):
        return _own_broker(config)
    ns, state = config.namespace, config.state_dir
    operator_pw = credentials.password_for(state, "operator", ns)
    viewer_pw = credentials.password_for(state, "viewer", ns)
    # The key and the daemon's password are new at every start, and only in this process and
    # the node's private files; the node's address comes from the node itself.
    key = secrets.token_bytes(32)
    kept = broker_setup.Kept(key, secrets.token_urlsafe(24), operator_pw, viewer_pw, "", 0)
    setup = kept.setup(config.max_total)
    node = EmbeddedBroker(
        state / "broker", name=f"vsmd-{ns}", nofile=config.embedded_broker_nofile, secure=setup
    )
    log.info("starting an embedded RabbitMQ node set up for secure mode (about 5 s)")
    node.start()
    try:
        check_boundary(node.url, TokenMinter(key, RESOURCE_SERVER_ID, VHOST))
    except BaseException:  # a refusal, or Ctrl-C meanwhile: the node must not outlive us
        node.stop()
        raise
    config = dataclasses.replace(config, broker_url=node.url)
    for role, user, pw in (
        ("operator", OPERATOR_USER, operator_pw),
        ("viewer", VIEWER_USER, viewer_pw),
    ):
        path = credentials.write(state, role, ns, user, pw, node.url)
        log.info("%s credentials for vsmctl: %s", role, path)
    return config, node, Trust(config, Topology(ns), key, node.node_log, node.close_connections)


def _own_broker(config: Config) -> tuple[Config, None, Trust]:
    kept = broker_setup.load(config.state_dir, config.namespace)
    parts = urlsplit(config.broker_url)  # where the broker is now; the logins are the setup's
    kept = dataclasses.replace(kept, host=parts.hostname or kept.host, port=parts.port or kept.port)
    check_boundary(kept.daemon_url, TokenMinter(kept.key, RESOURCE_SERVER_ID, VHOST))
    config = dataclasses.replace(config, broker_url=kept.daemon_url)
    log.info(
        "secure mode on %s, set up by `vsmd broker setup`", without_credentials(kept.daemon_url)
    )
    return config, None, Trust(config, Topology(config.namespace), kept.key)


def _check_os_boundary(config: Config) -> None:
    """The file and process side: VSMs under uids of their own need root and a Python that
    every user can read; anything less is said at every start."""
    if os.geteuid() != 0:
        log.warning(
            "secure mode without root: VSMs run under the daemon's uid, so agent code can read "
            "the files of that user (the state directory with the operator credentials "
            "included); run vsmd as root for a uid per VSM (docs/security.md)"
        )
        return
    if not config.vsm_uid_base:
        log.warning(
            "vsm_uid_base = 0: VSMs run as root; agent code can read every file and process "
            "memory of this machine (docs/security.md)"
        )
        return
    closed = closed_to_others()
    if closed:
        more = f" and {len(closed) - 1} more" if len(closed) > 1 else ""
        raise ConfigError(
            f"secure mode runs each VSM under a uid of its own, but other users cannot read "
            f"{closed[0]}{more}: install vsmd with a Python every user can read (the Makefile "
            f"prefers /usr/bin/python3), or set vsm_uid_base = 0 to keep VSMs as root "
            f"(docs/security.md)"
        )


def check_boundary(daemon_url: str, minter: TokenMinter) -> None:
    """Refuse to start unless `guest` is shut out and the broker takes vsmd's tokens."""
    base = without_credentials(daemon_url)
    params = pika.URLParameters(base)
    params.credentials = pika.PlainCredentials("guest", "guest")
    params.socket_timeout = params.blocked_connection_timeout = 5.0
    try:
        close_quietly(pika.BlockingConnection(params))
    except CONNECTION_ERRORS:
        pass  # refused: as it must be
    else:
        raise ConfigError(
            f"the broker at {base} lets `guest` into vhost {params.virtual_host!r}: the trust "
            "boundary does not hold; refusing to start"
        )
    # One scope on a name nothing uses: without any the vhost itself is refused.
    probe = minter.mint("vsmd-check", [minter.scope("read", "vsmd-check")], 60)
    params.credentials = pika.PlainCredentials("vsmd-check", probe)
    try:
        close_quietly(pika.BlockingConnection(params))
    except CONNECTION_ERRORS as exc:
        raise ConfigError(
            f"the broker at {base} does not accept vsmd's tokens ({type(exc).__name__}): "
            "its oauth2 backend or signing key is missing; refusing to start"
        ) from None
    _check_events(daemon_url, base)


def _check_events(daemon_url: str, base: str) -> None:
    """The connection events the per-VSM connection cap reads (rabbitmq_event_exchange)."""
    try:
        conn = pika.BlockingConnection(pika.URLParameters(daemon_url))
    except CONNECTION_ERRORS as exc:
        raise ConfigError(f"the broker at {base} refuses vsmd's own login: {exc!r}") from None
    try:
        conn.channel().exchange_declare(BROKER_EVENTS, passive=True)
    except CONNECTION_ERRORS:
        raise ConfigError(
            f"the broker at {base} has no {BROKER_EVENTS} in vhost {VHOST!r}: enable "
            f"rabbitmq_event_exchange with event_exchange.vhost = {VHOST} (vsmd broker setup); "
            "refusing to start"
        ) from None
    finally:
        close_quietly(conn)
