"""What a namespace leaves on the broker, and removing it.

A namespace's named objects are the four below (docs/protocol.md, "Topology"), and the task
queues of its workers (``<ns>.tasks.<id>``), which outlive their processes on purpose: AMQP
cannot list them, so the caller names the VSMs (the daemon's journal has them). VSM inboxes
are exclusive and event followers' queues exclusive and auto-deleted: both go with their
connections.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pika
import pika.exceptions

from vsmd.bus.connection import CONNECTION_ERRORS, close_quietly, connect, describe, redact
from vsmd.bus.topology import Topology
from vsmd.errors import BrokerError, Conflict

NOT_FOUND = 404
PRECONDITION_FAILED = 406


def persistent_queues(topo: Topology) -> tuple[str, ...]:
    """Queues that outlive the daemon's connection; the admin queue first, so that a daemon
    consuming it stops a removal before anything else is gone."""
    return (topo.admin_queue, topo.daemon_queue, topo.dead_queue)


def remove_namespace(
    url: str, namespace: str, force: bool = False, vsm_ids: Iterable[str] = ()
) -> list[str]:
    """Delete every queue and exchange of ``namespace``, and the task queues of ``vsm_ids``;
    returns the names that existed.

    Refuses (``Conflict``) while a daemon consumes the admin queue: the broker checks that
    itself (``if_unused``), so a daemon that starts between a look and the delete cannot lose
    its queues. ``force`` deletes them anyway.
    """
    topo = Topology(namespace)
    conn = connect(url)
    try:
        removed: list[str] = []
        for queue in persistent_queues(topo):
            # The daemon consumes these two; the dead-letter queue has no consumer of its own.
            guarded = not force and queue != topo.dead_queue
            if _delete(conn, "queue", queue, guarded):
                removed.append(queue)
        for queue in (topo.task_queue(i) for i in vsm_ids):
            if _delete(conn, "queue", queue, False):
                removed.append(queue)
        if _delete(conn, "exchange", topo.exchange, False):
            removed.append(topo.exchange)
        return removed
    except CONNECTION_ERRORS as exc:
        raise BrokerError(f"lost the broker {redact(url)}: {describe(exc)}") from None
    finally:
        close_quietly(conn)


def _delete(conn: pika.BlockingConnection, kind: str, name: str, if_unused: bool) -> bool:
    """One delete on a channel of its own (a refusal closes the channel); True if the object
    existed. AMQP deletes what is not there without a word, so look first."""
    ch: Any = conn.channel()
    declare = ch.queue_declare if kind == "queue" else ch.exchange_declare
    try:
        declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return False
        raise _refused(name, exc) from None
    try:
        if kind == "queue":
            ch.queue_delete(name, if_unused=if_unused)
        else:
            ch.exchange_delete(name)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == PRECONDITION_FAILED:
            raise Conflict(f"a daemon consumes {name}; stop it first", queue=name) from None
        raise _refused(name, exc) from None
    ch.close()
    return True


def _refused(name: str, exc: pika.exceptions.ChannelClosedByBroker) -> BrokerError:
    # 403 (no configure right on the name) is the likely one: a broker user of a VSM or an
    # operator in secure mode, or a vhost the user may not change.
    return BrokerError(f"the broker refused to delete {name}: {exc.reply_code} {exc.reply_text}")
