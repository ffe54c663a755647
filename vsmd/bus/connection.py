"""Opening AMQP connections and translating pika's errors into vsmd's."""

from __future__ import annotations

import contextlib
from typing import TypeVar
from urllib.parse import urlsplit

import pika
import pika.exceptions

from vsmd.errors import BrokerError

T = TypeVar("T")

# What a lost or refused connection looks like in pika.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)


# Either of ours or pika's: what a caller that survives a lost broker catches.
BUS_ERRORS: tuple[type[BaseException], ...] = (BrokerError, *CONNECTION_ERRORS)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return parts._replace(netloc=f"{parts.username}:***@{host}{port}").geturl()
    return url


def parameters(url: str, heartbeat: int = 30, timeout: float = 5.0) -> pika.URLParameters:
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # pika raises several kinds for a malformed URL
        raise BrokerError(f"invalid broker URL {redact(url)!r}: {exc}") from None
    params.heartbeat = heartbeat
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = max(timeout, 10.0)
    params.connection_attempts = 1
    params.retry_delay = 0
    return params


def describe(exc: BaseException) -> str:
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return "the broker refused the credentials"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "the broker denied access to the virtual host"
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        text = str(exc) or type(exc).__name__
        if "refused" in text.lower() or not str(exc) or "ConnectionRefused" in text:
            return f"no broker answers ({text})"
        return f"connection failed ({text})"
    return f"{type(exc).__name__}: {exc}"


def connect(url: str, heartbeat: int = 30, timeout: float = 5.0) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(parameters(url, heartbeat, timeout))
    except CONNECTION_ERRORS as exc:
        raise BrokerError(
            f"cannot connect to broker {redact(url)}: {describe(exc)}", url=redact(url)
        ) from None


def login_of(conn: pika.BlockingConnection) -> str | None:
    """The user this connection logged in as: every publish carries it as ``user_id``, which
    the broker checks, so receivers know who sent a message without trusting its body."""
    creds = getattr(getattr(conn, "_impl", None), "params", None)
    user = getattr(getattr(creds, "credentials", None), "username", None)
    return user if isinstance(user, str) and user else None


def close_quietly(conn: pika.BlockingConnection | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):
        if conn.is_open:
            conn.close()
