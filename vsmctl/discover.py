"""Which daemon vsmctl talks to, and with which login.

In order: a broker URL given (``--broker``, VSM_BROKER_URL), with credentials when they are
named too; credentials named (``--credentials``, VSM_CREDENTIALS); the daemon that published
where it runs (vsmd/locator.py); the operator file of a state directory; the default URL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vsmd.config import DEFAULT_BROKER_URL
from vsmd.locator import PREFERRED_NAMESPACE, Located, Where, locate
from vsmd.security import credentials
from vsmd.security.credentials import Credentials


@dataclass(frozen=True)
class Target:
    namespace: str
    broker_url: str
    credentials: Credentials | None = None
    located: Located | None = None  # what locate saw, when it was asked


def resolve(
    broker_url: str | None,
    namespace: str | None,
    env: Mapping[str, str],
    credentials_path: str | None = None,
) -> Target:
    """ConfigError (one line) when credentials that are named, or that a daemon's where-file
    names, cannot be read."""
    given_ns = namespace or env.get("VSM_NAMESPACE") or None
    given_url = broker_url or env.get("VSM_BROKER_URL")
    named = credentials_path or env.get(credentials.ENV)
    located = None
    if not given_url and not named:
        located = locate(env, given_ns)
        if located.where is not None:
            return _through(located.where, located)
    ns = given_ns or PREFERRED_NAMESPACE
    creds = None
    if not given_url or named:
        # Named credentials, or a state directory's operator file, also name the namespace.
        creds = credentials.find(env, credentials_path, ns)
        if creds is not None and not given_ns:
            ns = creds.namespace
    url = given_url or (creds.broker_url if creds else DEFAULT_BROKER_URL)
    return Target(ns, url, creds, located)


def _through(where: Where, located: Located) -> Target:
    if where.credentials is None:  # a cooperative daemon: its URL as it is
        return Target(where.namespace, where.broker_url, None, located)
    creds = credentials.read(Path(where.credentials))
    # The login from the file, the address from the daemon: a broker of your own may have
    # moved since `vsmd broker setup` wrote the file.
    login = urlsplit(creds.broker_url).netloc.rpartition("@")[0]
    address = urlsplit(where.broker_url)
    netloc = f"{login}@{address.netloc}" if login else address.netloc
    url = address._replace(netloc=netloc).geturl()
    return Target(where.namespace, url, dataclasses.replace(creds, broker_url=url), located)
