"""Cheap answers to "is a broker there?" that never raise."""

from __future__ import annotations

import contextlib
import socket

import pika


def broker_answers(url: str, timeout: float = 2.0) -> bool:
    """True if an AMQP broker completes a handshake at ``url`` within about ``timeout``."""
    try:
        params = pika.URLParameters(url)
        params.socket_timeout = timeout
        params.stack_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.connection_attempts = 1
        params.retry_delay = 0
        conn = pika.BlockingConnection(params)
    except Exception:  # any failure simply means "not answering"
        return False
    # The handshake already proved the broker is there; a failing close changes nothing.
    with contextlib.suppress(Exception):
        conn.close()
    return True


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
