"""The daemon's loop survives an unexpected exception in what it runs: fork-server events, timers
and admin requests each cost only themselves, never the loop (whose cleanup kills every VSM).
Also on this loop without a broker: how often it probes the VSMs' inboxes."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pika.spec
import pytest

from tests.unit.fakes import FakePool
from vsmd.config import Config
from vsmd.daemon import service as daemon_module
from vsmd.daemon.journal import Entry
from vsmd.daemon.service import JOURNAL_RETRY, Daemon
from vsmd.protocol import SpawnConfig

Step = Callable[[], None]


class LoopPool(FakePool):
    """The fork server handle: records spawns and kills, starts and stops nothing."""

    pid = None

    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped += 1


class LoopBus:
    """A connected bus whose every pump runs the test's next step (each loop turn pumps once)."""

    connected = True

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.replies: list[bytes] = []

    def connect(self) -> None:
        pass

    def pump(self, _timeout: float) -> None:
        if not self.steps:
            raise AssertionError("the loop went on after the test's last step")
        self.steps.pop(0)()

    def wake(self) -> None:
        pass

    def reply(self, _props: pika.spec.BasicProperties, body: bytes) -> None:
        self.replies.append(body)

    def publish(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def delete_queue(self, _queue: str) -> None:
        pass

    def leave(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    # A long sample interval: the sampler and the orphan reaper stay out of these tests.
    d = Daemon(Config(state_dir=tmp_path, namespace="faults", sample_interval=3600.0))
    pool = LoopPool()
    d.pool = d.manager.pool = pool  # type: ignore[assignment]
    d.bus = LoopBus([])  # type: ignore[assignment]
    monkeypatch.setattr(daemon_module, "become_subreaper", lambda: None)
    monkeypatch.setattr(d, "_install_signals", lambda: None)
    return d


def bug() -> None:
    raise RuntimeError("a bug in a timer")


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


def test_the_loop_outlives_a_bad_event_and_a_bad_timer(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    pool: LoopPool = daemon.pool  # type: ignore[assignment]
    bus: LoopBus = daemon.bus  # type: ignore[assignment]
    daemon.manager.spawn_recursive_vsm(None, SpawnConfig(name="a"))
    vsm_id = pool.last.vsm_id
    ran: list[str] = []

    def trouble() -> None:
        daemon._post({"ev": "exited", "vsm_id": vsm_id})  # no pid: a KeyError in the handler
        daemon._post({"ev": "spawned", "vsm_id": vsm_id, "pid": 4242})
        daemon.timers.call_later(0, bug)
        daemon.timers.call_later(0, lambda: ran.append("timer"))

    def check_and_stop() -> None:
        assert pool.stopped == 0  # the loop still runs: its cleanup did not stop the VSMs
        assert daemon.manager.show(vsm_id).pid == 4242  # the event after the bad one counted
        assert ran == ["timer"]  # and so did the timer after the bad one
        daemon._signals.append(signal.SIGTERM)

    def exit_on_stop() -> None:  # the stop waits for the VSM's exit
        daemon._post({"ev": "exited", "vsm_id": vsm_id, "pid": 4242, "code": 0, "signal": None})

    bus.steps = [trouble, check_and_stop, exit_on_stop]
    assert daemon.run() == 0
    assert bus.steps == []
    assert pool.stopped == 1
    messages = [r.getMessage() for r in tracebacks(caplog)]
    assert any(m.startswith("internal error while handling a {'ev': 'exited'") for m in messages)
    assert "internal error in a timer; supervision goes on" in messages


def test_an_admin_request_that_hits_a_bug_gets_one_internal_reply(
    daemon: Daemon, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus: LoopBus = daemon.bus  # type: ignore[assignment]

    def broken(*_args: object) -> None:
        raise KeyError("not there")

    monkeypatch.setattr(daemon.manager, "list_dicts", broken)
    props = pika.spec.BasicProperties(reply_to="r", correlation_id="c1")
    daemon._on_admin(props, orjson.dumps({"v": 1, "cmd": "list"}))
    [reply] = [orjson.loads(b) for b in bus.replies]
    assert reply == {
        "ok": False,
        "error": {
            "code": "INTERNAL",
            "message": "internal error while handling list; see the daemon log",
        },
    }
    [record] = tracebacks(caplog)
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


def test_the_daemon_replays_failed_journal_writes_without_a_spawn(daemon: Daemon) -> None:
    journal = daemon.journal
    journal.put(Entry("a", None, "a", "a", 1, "noop", {}, {}))
    journal._db.execute("PRAGMA query_only = ON")  # writes fail as in a read-only state dir
    journal.delete("a")
    daemon._retry_journal()
    assert (journal.pending, journal.count()) == (1, 1)
    journal._db.execute("PRAGMA query_only = OFF")
    daemon._retry_journal()
    assert (journal.pending, journal.count()) == (0, 0)
    assert daemon.timers.next_delay(60.0) <= JOURNAL_RETRY  # it keeps itself scheduled


def test_probes_stretch_their_period_to_stay_within_the_probe_rate(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path, namespace="probes", probe_interval=1.0, probe_rate=2.0)
    d = Daemon(config)
    d.pool = d.manager.pool = LoopPool()  # type: ignore[assignment]
    sent: list[dict[str, Any]] = []

    class ProbeBus(LoopBus):
        def publish(self, *args: Any, **_kwargs: Any) -> None:
            sent.append({"key": args[1], "expiration": args[5]})

    d.bus = ProbeBus([])  # type: ignore[assignment]
    assert d._probe_period() == 1.0  # nobody to probe: the interval
    for name in "abcdef":
        d.manager.spawn_recursive_vsm(None, SpawnConfig(name=name))
    assert d._probe_period() == 3.0  # 6 VSMs at no more than 2 probes a second
    ran: list[tuple[int, int]] = []
    d._in_slices(d._probe_period, lambda part, parts: ran.append((part, parts)))
    assert ran == [(0, daemon_module.SLICES)]
    assert d.timers.next_delay(60.0) == pytest.approx(3.0 / daemon_module.SLICES, abs=0.05)
    rec = next(iter(d.manager.registry.all()))
    assert d._probe_vsm(rec, rec.id + ".1")
    # A probe expires when the next one comes: never two of them waiting in one inbox.
    assert sent == [{"key": d.topo.id_key(rec.id), "expiration": "3000"}]
