"""``create_mcp_client``: an initialized SDK ``ClientSession`` to a VSM, by id or path.

Inside a VSM it rides on the VSM's own connection (``ctx.mcp_client``); elsewhere (vsmctl,
the daemon, Python users through ``VsmClient.mcp``) on a :class:`StandaloneLink`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import mcp_types as types
from mcp.client.session import ClientSession, MessageHandlerFnT

from vsmd import __version__
from vsmd.bus.topology import Topology
from vsmd.errors import ProtocolError
from vsmd.mcp.transport import ClientDispatcher
from vsmd.mcp.wire import Link

_ID = re.compile(r"[0-9a-f]{12}")
DEFAULT_TIMEOUT = 30.0


def target_key(topo: Topology, target: str) -> tuple[str, str]:
    """The routing key of a VSM named by id or path, and how errors name it."""
    if _ID.fullmatch(target):
        return topo.id_key(target), f"VSM {target}"
    if not target or len(target) > 1000 or any(c in target for c in "*# "):
        raise ProtocolError(f"bad MCP target {target[:64]!r}: a VSM id or path")
    return topo.down_key(target), f"VSM {target}"


@asynccontextmanager
async def open_session(
    link: Link,
    topo: Topology,
    target: str,
    sender: str,
    path: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    message_handler: MessageHandlerFnT | None = None,
) -> AsyncIterator[ClientSession]:
    """``message_handler`` hears what the server sends unasked, e.g. a subscribed resource's
    ``notifications/resources/updated``."""
    key, label = target_key(topo, target)
    info = types.Implementation(name=f"vsmd {sender}", version=__version__)
    try:
        async with (
            ClientDispatcher(link, key, label, sender, path) as dispatcher,
            ClientSession(
                read_timeout_seconds=timeout,
                dispatcher=dispatcher,
                client_info=info,
                message_handler=message_handler,
            ) as session,
        ):
            await session.initialize()
            yield session
    except BaseExceptionGroup as group:
        # The SDK's task group wraps what failed (an MCPError of initialize, or of the caller's
        # own code): callers get that error itself, as from any other call.
        raise _sole(group) from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


@asynccontextmanager
async def create_mcp_client(
    broker_url: str,
    namespace: str,
    target: str,
    sender: str = "vsmctl",
    timeout: float = DEFAULT_TIMEOUT,
    message_handler: MessageHandlerFnT | None = None,
) -> AsyncIterator[ClientSession]:
    """A session over a connection of its own, closed with the session."""
    # Imported here: the link is aio-pika's, which a VSM (its own client, vsmd/amqp/) never
    # loads; only the daemon and Python users come this way.
    from vsmd.mcp.link import StandaloneLink

    link = StandaloneLink(broker_url, namespace, min(timeout, 10.0))
    try:
        async with open_session(
            link, link.topo, target, sender, timeout=timeout, message_handler=message_handler
        ) as session:
            yield session
    finally:
        await link.close()
