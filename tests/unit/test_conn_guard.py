"""The per-VSM connection cap, fed connection events as RabbitMQ's event exchange sends them."""

from __future__ import annotations

import threading

from tests.support.harness import poll_for
from vsmd.daemon.conn_guard import PER_VSM, ConnectionGuard


def test_connections_beyond_the_cap_are_closed_and_counted() -> None:
    closed: list[list[str]] = []
    refused: list[tuple[str, str]] = []
    done = threading.Event()

    def close(pids: list[str], _reason: str) -> bool:
        closed.append(pids)
        done.set()
        return True

    guard = ConnectionGuard(close, lambda user, what: refused.append((user, what)))
    user = "vsm-0123456789ab"
    for i in range(PER_VSM):
        guard.on_event("connection.created", {"user": user, "pid": f"<n@h.1.{i}.0>"})
    # An operator's or the daemon's connections are not a VSM's: never capped.
    for i in range(5):
        guard.on_event("connection.created", {"user": "vsmd-operator", "pid": f"<n@h.2.{i}.0>"})
    assert closed == [] and refused == []
    guard.on_event("connection.created", {"user": user, "pid": "<n@h.1.9.0>"})
    poll_for(done.is_set, 5.0, 0.01, "the close")
    assert closed == [["<n@h.1.9.0>"]]
    assert refused == [(user, f"a connection beyond its {PER_VSM}")]
    # Once one is gone (closed events carry only the pid), another may come.
    guard.on_event("connection.closed", {"pid": "<n@h.1.9.0>"})
    guard.on_event("connection.closed", {"pid": "<n@h.1.0.0>"})
    guard.on_event("connection.created", {"user": user, "pid": "<n@h.1.10.0>"})
    assert len(refused) == 1


def test_without_a_way_to_close_it_still_counts() -> None:
    refused: list[tuple[str, str]] = []
    guard = ConnectionGuard(None, lambda user, what: refused.append((user, what)))
    for i in range(PER_VSM + 2):
        guard.on_event("connection.created", {"user": b"vsm-0123456789ab", "pid": f"<n@h.{i}.0.0>"})
    assert len(refused) == 2
