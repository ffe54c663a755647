"""What a RabbitMQ node needs for the trust boundary, rendered as its own config files.

The embedded node writes these into its private (0700) data directory; `vsmd broker setup`
prints them for an operator's own broker. Secrets never travel on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field

import orjson

from vsmd.security.tokens import KEY_ID, b64url

PLUGIN = "rabbitmq_auth_backend_oauth2"
# Connection events, so the daemon can hold each VSM to a few connections (conn_guard.py).
EVENTS_PLUGIN = "rabbitmq_event_exchange"


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str
    # configure, write, read: regexes over resource names in the vhost
    perms: tuple[str, str, str]


@dataclass(frozen=True)
class SecureSetup:
    key: bytes
    resource_server_id: str
    vhost: str
    users: tuple[BrokerUser, ...] = field(default=())
    # Caps on the vhost as a whole: a hostile VSM may open connections with its token, but the
    # broker's file descriptors and memory stay bounded (0: no cap).
    max_connections: int = 0
    max_queues: int = 0


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def conf_lines(setup: SecureSetup) -> list[str]:
    # Internal users first (the daemon and the operators): the oauth2 backend fails with an
    # internal error on a password that is no JWT instead of passing it on. A VSM's token
    # matches no internal user and falls through to oauth2.
    return [
        "auth_backends.1 = internal",
        "auth_backends.2 = rabbit_auth_backend_oauth2",
        f"auth_oauth2.resource_server_id = {setup.resource_server_id}",
        f"event_exchange.vhost = {setup.vhost}",
        # A VSM uses one channel; a few more for clients. Caps what a hostile VSM can open.
        "channel_max = 16",
    ]


def advanced_config(setup: SecureSetup) -> str:
    # 3.10 takes a symmetric key only here, as a JWK map (``kty`` oct, ``k`` base64url).
    k = b64url(setup.key)
    return (
        f"[{{{PLUGIN}, [{{key_config, [\n"
        f'  {{default_key, <<"{KEY_ID}">>}},\n'
        f'  {{algorithms, [<<"HS256">>]}},\n'
        f'  {{signing_keys, #{{<<"{KEY_ID}">> => {{map, #{{<<"kty">> => <<"oct">>, '
        f'<<"alg">> => <<"HS256">>, <<"k">> => <<"{k}">>}}}}}}}}\n'
        "]}]}].\n"
    )


def definitions(setup: SecureSetup) -> bytes:
    users = [
        {
            "name": u.name,
            "password_hash": password_hash(u.password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        }
        for u in setup.users
    ]
    perms = [
        {"user": u.name, "vhost": setup.vhost, "configure": c, "write": w, "read": r}
        for u in setup.users
        for c, w, r in [u.perms]
    ]
    return orjson.dumps(
        {"users": users, "vhosts": [{"name": setup.vhost}], "permissions": perms},
        option=orjson.OPT_INDENT_2,
    )
