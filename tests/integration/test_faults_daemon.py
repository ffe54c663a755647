"""Faults inside the daemon that must cost only what they touch: a handler's exception is not a
lost broker; a full disk refuses new VSMs but keeps supervising the running ones."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.spec
import pytest

from tests.support.harness import (
    cleanup_namespace,
    new_namespace,
    poll_for,
    start_daemon,
)
from vsmctl.client import VsmClient
from vsmd.bus.daemon_bus import DaemonBus
from vsmd.bus.topology import Topology
from vsmd.errors import JournalUnavailable
from vsmd.protocol import Policy, SpawnConfig, VsmInfo


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


# --- a full disk under the journal ------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for the daemon's state directory (the tests run as root)."""
    where = tmp_path / "state"
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (this test needs root): {res.stderr.strip()}")
    try:
        yield where
    finally:
        log = where / "vsmd.log"
        if log.exists():  # kept for a failing test's report: the mount goes away
            shutil.copy(log, tmp_path / "vsmd.log")
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            os.write(fd, chunk)  # a partial write returns short; the next one raises
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def journaled(state_dir: Path, namespace: str) -> set[str]:
    path = state_dir / f"journal-{namespace}.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM vsms")}
    finally:
        db.close()


def back_with_new_pid(c: VsmClient, vsm: VsmInfo) -> VsmInfo:
    def check() -> VsmInfo | None:
        info = c.show(vsm.id)
        ok = info.status == "running" and info.pid not in (None, vsm.pid)
        return info if ok else None

    return poll_for(check, 60, what=f"{vsm.path} to come back")


def test_a_full_disk_refuses_spawns_and_keeps_supervising(broker_url: str, small_fs: Path) -> None:
    d = start_daemon(broker_url, small_fs, config={"backoff_initial": 0.05})
    try:
        c = d.client()
        keeper = c.spawn_recursive_vsm(
            None, SpawnConfig(name="keeper", policy=Policy(restart="permanent"))
        )
        gone = c.spawn_recursive_vsm(None, SpawnConfig(name="gone"))
        filler = fill(small_fs)
        try:
            with pytest.raises(JournalUnavailable) as info:
                c.spawn_recursive_vsm(None, SpawnConfig(name="refused"))
            journal = small_fs / f"journal-{d.namespace}.db"
            assert info.value.message.startswith(f"cannot write the journal {journal}: ")
            assert "full" in info.value.message  # SQLite's "database or disk is full"
            res = d.vsmctl("spawn", "--name", "refused")
            assert res.returncode == 1
            assert res.stderr.startswith("vsmctl: JOURNAL_UNAVAILABLE: cannot write the journal")
            # What runs is still supervised: a crash is restarted, a terminate ends.
            assert keeper.pid is not None
            os.kill(keeper.pid, signal.SIGKILL)
            back_with_new_pid(c, keeper)
            assert c.terminate_child_vsm(gone.id) == [gone.id]
            assert {v.name for v in c.list_child_vsms()} == {"keeper"}
        finally:
            filler.unlink()
        # Room again: spawns are admitted without a restart, and the journal forgets `gone`.
        new = c.spawn_recursive_vsm(None, SpawnConfig(name="new"))
        assert new.status == "running"
        assert journaled(small_fs, d.namespace) == {keeper.id, new.id}
        assert c.ping()["pid"] == d.proc.pid  # the same daemon all along
    finally:
        d.stop()
        cleanup_namespace(broker_url, d.namespace)
