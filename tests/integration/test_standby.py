"""The fork server's standby on a real daemon and broker: forked once the fork server is idle
after a spawn, taken by the next spawn (the VSM has the standby's pid and answers), replaced
when it dies unused, and absent with ``spawn_standby = false``."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from tests.support.harness import (
    DaemonProc,
    close_connection_of,
    is_standby,
    poll_for,
    running_daemon,
)
from vsmd.protocol import Policy, SpawnConfig


def standbys(forkserver: int) -> list[int]:
    return [p.pid for p in psutil.Process(forkserver).children() if is_standby(p)]


def broker_links(pid: int, broker_url: str) -> list[tuple[str, int]]:
    """The local ends of ``pid``'s established TCP connections to the broker."""
    port = urlsplit(broker_url).port or 5672
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def first_vsm(d: DaemonProc) -> tuple[str, int]:
    """A VSM, and its fork server's pid."""
    c = d.client()
    vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="first"))
    pid = c.show(vsm.id).pid
    assert pid is not None
    return vsm.id, psutil.Process(pid).ppid()


def first_standby(d: DaemonProc) -> tuple[int, int]:
    """After a first spawn: the fork server's pid and its standby's, once it is there."""
    _, forkserver = first_vsm(d)
    [pid] = poll_for(lambda: standbys(forkserver) or None, what="a standby")
    return forkserver, pid


def test_the_next_spawn_takes_the_standby_and_a_new_one_follows(
    broker_url: str, tmp_path: Path
) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        forkserver, ready = first_standby(d)
        # It connected to the broker ahead (cooperative mode), and the VSM it becomes keeps
        # that connection: the same one, and no other.
        made = poll_for(lambda: broker_links(ready, broker_url) or None, what="its connection")
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="second"))
        assert c.show(vsm.id).pid == ready
        assert c.ping_vsm(vsm.id)["entry"] == "forkserver.py"
        assert broker_links(ready, broker_url) == made
        assert f"vsm {vsm.id}" in " ".join(psutil.Process(ready).cmdline())
        [after] = poll_for(lambda: standbys(forkserver) or None, what="the next standby")
        assert after != ready
        # Its limits are the VSM's, set after the spec arrived: twice max_fds (rlimits.py).
        capped = c.spawn_recursive_vsm(None, SpawnConfig(name="capped", policy=Policy(max_fds=150)))
        assert c.show(capped.id).pid == after
        soft, _hard = psutil.Process(after).rlimit(psutil.RLIMIT_NOFILE)
        assert soft == 300


def test_a_standby_killed_before_use_is_replaced_and_spawns_go_on(
    broker_url: str, tmp_path: Path
) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        forkserver, doomed = first_standby(d)
        os.kill(doomed, signal.SIGKILL)
        poll_for(
            lambda: [p for p in standbys(forkserver) if p != doomed] or None,
            what="a standby in place of the killed one",
        )
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="after"))
        assert c.ping_vsm(vsm.id)["entry"] == "forkserver.py"
        # The standby's death was no VSM's: the daemon has the two VSMs, both running.
        assert sorted(v.status for v in c.list_child_vsms()) == ["running", "running"]


def test_a_standby_whose_connection_the_broker_closed_connects_anew_as_the_vsm(
    broker_url: str, tmp_path: Path
) -> None:
    with running_daemon(broker_url, tmp_path) as d:
        _, ready = first_standby(d)
        [made] = poll_for(lambda: broker_links(ready, broker_url) or None, what="its connection")
        close_connection_of(ready, urlsplit(broker_url).port or 5672, "a test of the standby")
        poll_for(lambda: broker_links(ready, broker_url) == [] or None, what="it to be closed")
        c = d.client()
        vsm = c.spawn_recursive_vsm(None, SpawnConfig(name="anew"))
        assert c.show(vsm.id).pid == ready
        assert c.ping_vsm(vsm.id)["entry"] == "forkserver.py"
        [now] = broker_links(ready, broker_url)
        assert now != made


def test_no_standby_when_turned_off(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path, config={"spawn_standby": False}) as d:
        vsm_id, forkserver = first_vsm(d)
        c = d.client()
        c.ping_vsm(vsm_id)  # the fork server has long been idle by the time the VSM answers
        second = c.spawn_recursive_vsm(None, SpawnConfig(name="second"))
        assert standbys(forkserver) == []
        assert {p.pid for p in psutil.Process(forkserver).children()} == {
            c.show(vsm_id).pid,
            c.show(second.id).pid,
        }
