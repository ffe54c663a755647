"""How a VSM reaches the broker: the URL it connects to, and in secure mode the token it asks
the daemon for on its Unix socket before every connection (docs/security.md)."""

from __future__ import annotations

import asyncio
import socket

import orjson
from yarl import URL

from vsmd.errors import BrokerError
from vsmd.spec import VsmSpec


def amqp_url(spec: VsmSpec, user: str | None = None, token: str | None = None) -> str:
    url = URL(spec.broker_url)
    if url.host == "localhost":
        # A numeric address: resolving a name costs the VSM a resolver thread of the loop.
        url = url.with_host("127.0.0.1")
    if user is not None:
        url = url.with_user(user).with_password(token)
    return str(url.update_query(heartbeat=spec.heartbeat))


async def _connect_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to a Unix socket, ``path`` abstract (leading NUL) or not: connected here,
    because uvloop's own connect by path does not reach abstract sockets."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        return await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


async def fetch_token(path: str, timeout: float = 15.0) -> tuple[str, str, float]:
    """(user, token, ttl) from the daemon's token socket; BrokerError when it says no."""
    try:
        reader, writer = await asyncio.wait_for(_connect_unix(path), timeout)
        try:
            raw = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
        reply = orjson.loads(raw)
    except (OSError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise BrokerError(f"cannot get a broker token from the daemon: {exc!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("token"), str):
        why = reply.get("error") if isinstance(reply, dict) else None
        raise BrokerError(f"the daemon gave no broker token: {why or 'bad answer'}")
    return str(reply["user"]), reply["token"], float(reply.get("ttl", 600.0))
