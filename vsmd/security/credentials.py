"""Operator credentials: files the daemon writes (mode 0600) and vsmctl reads.

One file per role, ``<state_dir>/<role>-<namespace>.json``:
``{"role": ..., "namespace": ..., "broker_url": "amqp://<user>:<password>@host:port/vhost"}``.
The passwords are made at the first start and kept; the URL follows the broker's port.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import orjson

from vsmd.errors import ConfigError
from vsmd.security.private_file import write_private

ENV = "VSM_CREDENTIALS"


@dataclass(frozen=True)
class Credentials:
    role: str
    namespace: str
    broker_url: str
    source: str = ""

    @property
    def password(self) -> str:
        return unquote(urlsplit(self.broker_url).password or "")


def credentials_file(state_dir: Path, role: str, namespace: str) -> Path:
    return state_dir / f"{role}-{namespace}.json"


def read(path: Path) -> Credentials:
    """ConfigError (one line) when the file is missing, unreadable or not what it should be."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read credentials {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise ConfigError(f"credentials {path} are not valid JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("role", "namespace", "broker_url")
    ):
        raise ConfigError(f"credentials {path} lack role, namespace or broker_url")
    return Credentials(data["role"], data["namespace"], data["broker_url"], str(path))


def password_for(state_dir: Path, role: str, namespace: str) -> str:
    """The role's password from an earlier start, or a new one."""
    path = credentials_file(state_dir, role, namespace)
    try:
        return read(path).password or secrets.token_urlsafe(24)
    except ConfigError:
        return secrets.token_urlsafe(24)


def write(state_dir: Path, role: str, namespace: str, user: str, password: str, url: str) -> Path:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    broker_url = parts._replace(netloc=netloc).geturl()
    path = credentials_file(state_dir, role, namespace)
    data = {"role": role, "namespace": namespace, "broker_url": broker_url}
    write_private(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return path


def find(env: Mapping[str, str], explicit: str | None, namespace: str) -> Credentials | None:
    """What vsmctl logs in with: ``--credentials``, then VSM_CREDENTIALS, then the operator
    file of a daemon's state directory (VSM_STATE_DIR, ./.state of `make run`, /var/lib/vsmd).
    None when there is nothing to use (a cooperative daemon needs nothing)."""
    named = explicit or env.get(ENV)
    if named:
        return read(Path(named))
    dirs = [env.get("VSM_STATE_DIR") or "", ".state", "/var/lib/vsmd"]
    for d in dirs:
        if d:
            path = credentials_file(Path(d), "operator", namespace)
            if path.exists():
                return read(path)
    return None
