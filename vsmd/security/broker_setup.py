"""Secure mode on a broker of the operator's own: what it needs, and what the daemon keeps.

``vsmd broker setup`` makes (or reuses) the signing key and the passwords, keeps them in
``<state_dir>/broker-setup-<namespace>.json`` (mode 0600, for the daemon), writes the files the
broker needs into a directory of their own (mode 0700) and prints how to apply them. Secrets are
written to files only, never printed.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson

from vsmd.broker import secure
from vsmd.broker.secure import BrokerUser, SecureSetup
from vsmd.errors import ConfigError
from vsmd.security import credentials
from vsmd.security.identity import (
    DAEMON_USER,
    OPERATOR_PERMS,
    OPERATOR_USER,
    RESOURCE_SERVER_ID,
    VHOST,
    VIEWER_USER,
)
from vsmd.security.private_file import write_private

ALL = (".*", ".*", ".*")


@dataclass(frozen=True)
class Kept:
    """What the daemon needs of a setup: the key, its own login, where the broker is."""

    key: bytes
    daemon_password: str
    operator_password: str
    viewer_password: str
    host: str
    port: int

    def setup(self, max_total: int) -> SecureSetup:
        return SecureSetup(
            self.key,
            RESOURCE_SERVER_ID,
            VHOST,
            (
                BrokerUser(DAEMON_USER, self.daemon_password, ALL),
                BrokerUser(OPERATOR_USER, self.operator_password, OPERATOR_PERMS),
                BrokerUser(VIEWER_USER, self.viewer_password, OPERATOR_PERMS),
            ),
            # Each VSM holds one connection and one queue; the rest is room for clients and
            # for VSMs that reconnect before the broker has dropped their old connection.
            max_connections=max_total * 2 + 100,
            max_queues=max_total * 2 + 1000,
        )

    def url(self, user: str, password: str) -> str:
        login = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{login}@{self.host}:{self.port}/{VHOST}"

    @property
    def daemon_url(self) -> str:
        return self.url(DAEMON_USER, self.daemon_password)


def kept_file(state_dir: Path, namespace: str) -> Path:
    return state_dir / f"broker-setup-{namespace}.json"


def load(state_dir: Path, namespace: str) -> Kept:
    path = kept_file(state_dir, namespace)
    try:
        data = orjson.loads(path.read_bytes())
        return Kept(
            base64.b64decode(data["key"]),
            data["daemon_password"],
            data["operator_password"],
            data["viewer_password"],
            data["host"],
            int(data["port"]),
        )
    except FileNotFoundError:
        raise ConfigError(
            f'trust = "secure" with a broker of your own needs its setup: run `vsmd broker '
            f'setup` (no {path}), or use --broker embedded, or trust = "cooperative"'
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def make(state_dir: Path, namespace: str, broker_url: str) -> Kept:
    """The setup kept from an earlier run (same key and passwords), or a new one."""
    parts = urlsplit(broker_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        old = load(state_dir, namespace)
    except ConfigError:
        old = None
    kept = Kept(
        old.key if old else secrets.token_bytes(32),
        old.daemon_password if old else secrets.token_urlsafe(24),
        old.operator_password if old else secrets.token_urlsafe(24),
        old.viewer_password if old else secrets.token_urlsafe(24),
        host,
        port,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "key": base64.b64encode(kept.key).decode(),
        "daemon_password": kept.daemon_password,
        "operator_password": kept.operator_password,
        "viewer_password": kept.viewer_password,
        "host": host,
        "port": port,
    }
    write_private(kept_file(state_dir, namespace), orjson.dumps(data, option=orjson.OPT_INDENT_2))
    for role, user, pw in (
        ("operator", OPERATOR_USER, kept.operator_password),
        ("viewer", VIEWER_USER, kept.viewer_password),
    ):
        credentials.write(state_dir, role, namespace, user, pw, kept.url(user, pw))
    return kept


def write_broker_files(out: Path, setup: SecureSetup) -> list[Path]:
    """The files a RabbitMQ node needs for secure mode, into ``out`` (mode 0700)."""
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    files = {
        "enabled_plugins": f"[{secure.PLUGIN},{secure.EVENTS_PLUGIN}].\n".encode(),
        "rabbitmq.conf": ("\n".join(secure.conf_lines(setup)) + "\n").encode(),
        "advanced.config": secure.advanced_config(setup).encode(),
        "definitions.json": secure.definitions(setup),
    }
    for name, data in files.items():
        write_private(out / name, data)
    return [out / name for name in files]


def instructions(out: Path, setup: SecureSetup) -> str:
    limits = orjson.dumps(
        {"max-connections": setup.max_connections, "max-queues": setup.max_queues}
    ).decode()
    return f"""\
What your RabbitMQ (3.10 or later) needs for vsmd's secure mode; the files are in {out}
(mode 0600: they hold the signing key and password hashes; keep them that way):

1. Enable the OAuth 2.0 backend and the event exchange (needs a node restart):
     rabbitmq-plugins enable {secure.PLUGIN} {secure.EVENTS_PLUGIN}
2. Add the lines of {out / "rabbitmq.conf"} to the node's rabbitmq.conf.
3. Merge {out / "advanced.config"} into the node's advanced.config (it holds the key vsmd signs
   its VSMs' tokens with), then restart the node.
4. Create the vhost {setup.vhost}, vsmd's users and their permissions:
     rabbitmqctl import_definitions {out / "definitions.json"}
5. Close the default account, and cap the vhost:
     rabbitmqctl delete_user guest
     rabbitmqctl set_vhost_limits -p {setup.vhost} '{limits}'

Then start vsmd with trust = "secure" and this broker's URL (no credentials needed in it): it
checks at start that guest cannot log in and that the broker takes its tokens, and refuses to
start otherwise. Operator and viewer credentials for vsmctl are in the state directory.
"""
