"""The supervision event log: a ring buffer with sequence numbers and an optional publisher."""

from __future__ import annotations

import logging
import time

import pytest

from vsmd.daemon.events import Event, EventLog


def fill(log: EventLog, n: int) -> list[Event]:
    return [log.emit("k", f"m{i}", f"id{i}", f"p{i}", n=i) for i in range(1, n + 1)]


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_seq_increases_from_1() -> None:
    log = EventLog(10)
    assert log.last_seq == 0
    assert seqs(fill(log, 3)) == [1, 2, 3]
    assert log.last_seq == 3


def test_emit_keeps_what_it_was_given() -> None:
    log = EventLog(10)
    before = time.time()
    event = log.emit("restarted", "a is running again", "id1", "a", pid=42)
    assert (event.kind, event.message, event.vsm_id, event.path) == (
        "restarted",
        "a is running again",
        "id1",
        "a",
    )
    assert event.details == {"pid": 42}
    assert before <= event.time <= time.time()
    data = event.to_dict()
    assert data["seq"] == 1
    assert data["details"] == {"pid": 42}
    assert set(data) == {"seq", "kind", "vsm_id", "path", "message", "details", "time"}


def test_daemon_events_have_no_vsm() -> None:
    event = EventLog(10).emit("restored", "restored 2 VSMs", restored=2)
    assert (event.vsm_id, event.path) == (None, None)


def test_ring_buffer_keeps_the_newest() -> None:
    log = EventLog(3)
    fill(log, 5)
    assert seqs(log.since(0, 100)) == [3, 4, 5]
    assert log.last_seq == 5  # the sequence goes on past what is kept


def test_since_and_limit() -> None:
    log = EventLog(100)
    fill(log, 6)
    assert seqs(log.since(3, 100)) == [4, 5, 6]
    assert seqs(log.since(0, 2)) == [1, 2]  # the oldest first
    assert seqs(log.since(4, 1)) == [5]
    assert log.since(6, 100) == []
    assert log.since(99, 100) == []


def test_publisher_gets_every_event() -> None:
    got: list[Event] = []
    log = EventLog(2, got.append)
    emitted = fill(log, 3)
    assert got == emitted  # even the one the buffer no longer holds


def test_events_are_logged_at_their_level(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog(5)
    with caplog.at_level(logging.INFO, logger="vsmd.daemon.events"):
        log.emit("failed", "a gave up", level=logging.WARNING)
        log.emit("restarted", "b is back")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "failed: a gave up"),
        (logging.INFO, "restarted: b is back"),
    ]
