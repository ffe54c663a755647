"""Faults inside the daemon that must cost only what they touch: a handler's exception is not a
lost broker."""

from __future__ import annotations

import errno
import logging

import pika
import pika.spec
import pytest

from tests.support.harness import cleanup_namespace, new_namespace, poll_for
from vsmd.bus.daemon_bus import DaemonBus
from vsmd.bus.topology import Topology


def test_an_oserror_in_a_handler_does_not_drop_the_broker(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    topo = Topology(new_namespace())
    seen: list[bytes] = []

    def handle(body: bytes) -> None:
        seen.append(body)
        if body.startswith(b"bad"):
            # What a disk-full write in a handler raises; to pika's caller it looked like I/O.
            raise OSError(errno.ENOSPC, "No space left on device")

    bus = DaemonBus(
        broker_url,
        topo,
        30,
        lambda _props, body: handle(body),
        lambda _key, _props, body: handle(body),
    )
    bus.connect()
    sender = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        ch = sender.channel()
        ch.basic_publish("", topo.admin_queue, b"bad admin")
        ch.basic_publish(topo.exchange, topo.up_key("a", "ready"), b"bad event")
        ch.basic_publish("", topo.admin_queue, b"good admin")
        ch.basic_publish(topo.exchange, topo.up_key("a", "ready"), b"good event")

        def all_seen() -> bool:
            bus.pump(0.2)  # raised BrokerError("lost the broker: OSError ...") before
            return len(seen) == 4

        poll_for(all_seen, 60, 0, "the four messages")
        assert sorted(seen) == [b"bad admin", b"bad event", b"good admin", b"good event"]
        assert bus.connected
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
        assert len(errors) == 2
        assert all(isinstance(r.exc_info[1], OSError) for r in errors if r.exc_info)
    finally:
        sender.close()
        bus.close()
        cleanup_namespace(broker_url, topo.namespace)
