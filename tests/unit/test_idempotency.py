"""Idempotency keys: a repeated admin command is answered with its first reply, not run again."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.fakes import FakeClock, FakePool, Replies, Tree
from vsmd.daemon.control import Control
from vsmd.daemon.idempotency import ReplyCache
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.protocol import IDEM_MAX, Ping, Show, parse_admin

LIMIT = 65536


@pytest.fixture
def control(manager: SpawnManager) -> Control:
    return Control(manager.config, manager)


def admin(control: Control, respond: Replies, cmd: str, idem: str | None, **args: Any) -> None:
    request: dict[str, Any] = {"v": 1, "cmd": cmd, "args": args}
    if idem is not None:
        request["idem"] = idem
    control.handle_admin(orjson.dumps(request), respond)


def test_parse_admin_reads_the_key() -> None:
    body = orjson.dumps({"v": 1, "cmd": "show", "args": {"id": "a"}, "idem": "k1"})
    assert parse_admin(body, LIMIT) == (Show(id="a"), "k1")
    assert parse_admin(b'{"cmd": "ping"}', LIMIT) == (Ping(), None)


@pytest.mark.parametrize("idem", ["", 5, True, ["k"], "x" * (IDEM_MAX + 1)])
def test_a_bad_key_is_refused(control: Control, idem: object) -> None:
    replies = Replies()
    body = orjson.dumps({"v": 1, "cmd": "ping", "idem": idem})
    control.handle_admin(body, replies)
    reply = replies.only()
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert reply["error"]["details"] == {"field": "idem"}


def test_a_repeated_spawn_is_not_run_again(
    control: Control, manager: SpawnManager, pool: FakePool
) -> None:
    first, attached, later = Replies(), Replies(), Replies()
    admin(control, first, "spawn", "key-1", name="alpha")
    admin(control, attached, "spawn", "key-1", name="alpha")  # while the first is starting
    assert len(pool.spawned) == 1
    assert first.raw == attached.raw == []
    spec = pool.last
    manager.on_spawned(spec.vsm_id, 55)
    manager.on_ready(spec.vsm_id, 55)
    assert first.only()["result"]["id"] == spec.vsm_id
    assert attached.raw == first.raw
    admin(control, later, "spawn", "key-1", name="alpha")  # after it finished
    assert later.raw == first.raw
    assert len(pool.spawned) == 1 and len(manager.registry) == 1
    admin(control, Replies(), "spawn", "key-2", name="beta")  # another key runs
    assert len(pool.spawned) == 2
    stats = control.replies.stats
    assert (stats.executed, stats.attached, stats.replayed) == (2, 1, 1)


def test_a_repeated_terminate_gets_its_first_answer(
    control: Control, manager: SpawnManager, pool: FakePool
) -> None:
    tree = Tree(manager, pool)
    vsm = tree.start(name="alpha")
    first, again, fresh = Replies(), Replies(), Replies()
    admin(control, first, "terminate", "t-1", id=vsm.id)
    tree.exit(vsm.id, 0, 15)
    assert first.only()["result"] == {"terminated": [vsm.id]}
    admin(control, again, "terminate", "t-1", id=vsm.id)
    assert again.raw == first.raw  # not NOT_FOUND: the same answer as the first time
    admin(control, fresh, "terminate", "t-2", id=vsm.id)
    assert fresh.only()["error"]["code"] == "NOT_FOUND"  # a new command is executed


def test_reads_are_answered_afresh(control: Control, manager: SpawnManager, pool: FakePool) -> None:
    before, after = Replies(), Replies()
    admin(control, before, "list", "l-1")
    Tree(manager, pool).start(name="alpha")
    admin(control, after, "list", "l-1")
    assert before.only()["result"] == []
    assert len(after.only()["result"]) == 1
    assert len(control.replies) == 0


def test_the_cache_is_bounded_by_count_and_age() -> None:
    clock = FakeClock()
    cache = ReplyCache(max_keys=3, keep_for=60.0, clock=clock)
    for key in "abcd":
        done = cache.begin(key, Replies())
        assert done is not None
        done(key.encode())
    assert len(cache) == 3  # "a" made room for "d"
    assert cache.begin("a", Replies()) is not None  # forgotten: runs again
    clock.advance(61)
    replies = Replies()
    assert cache.begin("x", replies) is not None
    assert len(cache) == 1


def test_a_command_answers_once_whatever_calls_back(control: Control) -> None:
    cache = control.replies
    first, second = Replies(), Replies()
    done = cache.begin("k", first)
    assert done is not None
    assert cache.begin("k", second) is None
    done(b"one")
    done(b"two")  # a second answer of the same command goes nowhere
    assert first.raw == second.raw == [b"one"]
