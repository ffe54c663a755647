"""The control plane: one reply per admin request, and VSM requests checked against their path."""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

import orjson
import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakePool, Replies, Tree
from vsmd import __version__
from vsmd.daemon.control import Control
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.protocol import Envelope, SpawnConfig, VsmInfo


@pytest.fixture
def control(manager: SpawnManager) -> Control:
    return Control(manager.config, manager)


@pytest.fixture
def replies() -> Replies:
    return Replies()


def admin(control: Control, replies: Replies, cmd: str, **args: Any) -> None:
    control.handle_admin(orjson.dumps({"v": 1, "cmd": cmd, "args": args}), replies)


def from_vsm(
    control: Control, replies: Replies, sender: str, path: str, kind: str, **body: Any
) -> None:
    env = Envelope(type=kind, sender=sender, body=body)
    control.handle_vsm(path, kind, env.encode(), replies)


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    assert set(reply) == {"ok", "error"}
    assert isinstance(reply["error"]["message"], str)
    code: str = reply["error"]["code"]
    return code


# --- admin requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "BAD_JSON"),
        (b"", "BAD_JSON"),
        (b"[1, 2]", "BAD_REQUEST"),
        (b'{"v": 1}', "BAD_REQUEST"),
        (b'{"v": 2, "cmd": "ping"}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "reboot"}', "UNKNOWN_COMMAND"),
        (b'{"v": 1, "cmd": "show"}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "show", "args": {"id": 5}}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "show", "args": {"id": "x", "y": 1}}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "show", "args": {"id": "nope"}}', "NOT_FOUND"),
        (b'{"v": 1, "cmd": "list", "args": {"parent": "nope"}}', "NOT_FOUND"),
        (b'{"v": 1, "cmd": "list", "args": {"parent": "nope", "recursive": false}}', "NOT_FOUND"),
        (b'{"v": 1, "cmd": "terminate", "args": {"id": "nope"}}', "NOT_FOUND"),
        (b'{"v": 1, "cmd": "terminate", "args": {"id": "x", "timeout": 0}}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "terminate", "args": {"id": "x", "timeout": -1}}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "terminate", "args": {"id": "x", "timeout": 3601}}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "spawn", "args": {"parent": "nope"}}', "NOT_FOUND"),
        (b'{"v": 1, "cmd": "spawn", "args": {"agent": "martian"}}', "NOT_FOUND"),
        (b'{"v": 1, "cmd": "spawn", "args": {"name": "Bad Name"}}', "BAD_REQUEST"),
        (b'{"v": 1, "cmd": "spawn", "args": {"config": [1]}}', "BAD_REQUEST"),
        (b"{" + b" " * 70000 + b"}", "TOO_LARGE"),
    ],
)
def test_bad_admin_requests_get_exactly_one_error(
    control: Control, replies: Replies, pool: FakePool, body: bytes, code: str
) -> None:
    control.handle_admin(body, replies)
    assert error_code(replies.only()) == code
    assert pool.spawned == []


def test_spawn_refusals_get_exactly_one_error(
    make_manager: MakeManager, replies: Replies, pool: FakePool
) -> None:
    manager = make_manager(max_depth=2)
    control = Control(manager.config, manager)
    tree = Tree(manager, pool)
    top = tree.start(name="top")
    kid = tree.start(parent=top.id, name="kid")
    admin(control, replies, "spawn", name="top")  # a sibling of the same name
    admin(control, replies, "spawn", parent=kid.id, name="deep")  # over max_depth
    pending = Replies()
    admin(control, pending, "spawn", parent=top.id, name="top")  # fine: another level
    assert [error_code(r) for r in replies.decoded] == ["CONFLICT", "QUOTA_EXCEEDED"]
    assert replies.decoded[1]["error"]["details"] == {"limit": "max_depth", "value": 3, "max": 2}
    assert pending.raw == []  # waits for the VSM to be ready


def test_ping(control: Control, replies: Replies, tree: Tree) -> None:
    tree.start(name="one")
    admin(control, replies, "ping")
    reply = replies.only()
    assert reply["ok"] is True
    assert set(reply) == {"ok", "result"}
    result = reply["result"]
    assert result["pong"] is True
    assert result["version"] == __version__
    assert result["namespace"] == control.config.namespace
    assert result["pid"] == os.getpid()
    assert result["vsms"] == 1
    assert result["uptime"] >= 0


def test_admin_spawn_replies_when_ready(
    control: Control, replies: Replies, manager: SpawnManager, pool: FakePool
) -> None:
    admin(control, replies, "spawn", name="alpha", config={"k": 1})
    assert replies.raw == []
    spec = pool.last
    assert spec.config == {"k": 1}
    manager.on_spawned(spec.vsm_id, 55)
    assert replies.raw == []
    manager.on_ready(spec.vsm_id, 55)
    reply = replies.only()
    assert reply["ok"] is True
    info = VsmInfo.from_dict(reply["result"])
    assert (info.id, info.path, info.pid, info.status) == (spec.vsm_id, "alpha", 55, "running")


def test_admin_spawn_failure_replies_with_the_error(
    control: Control, replies: Replies, manager: SpawnManager, pool: FakePool
) -> None:
    admin(control, replies, "spawn", name="alpha")
    manager.on_spawn_failed(pool.last.vsm_id, "fork failed: out of luck")
    assert error_code(replies.only()) == "SPAWN_FAILED"


def test_admin_list_and_show(control: Control, replies: Replies, tree: Tree) -> None:
    top = tree.start(name="top")
    kid = tree.start(parent=top.id, name="kid")
    admin(control, replies, "list")
    admin(control, replies, "list", parent=top.id)
    admin(control, replies, "show", id=kid.id)
    listed_all, listed_under, shown = replies.decoded
    assert [d["id"] for d in listed_all["result"]] == [top.id, kid.id]
    assert [d["id"] for d in listed_under["result"]] == [kid.id]
    assert shown == {"ok": True, "result": kid.to_dict()}


def test_admin_terminate_replies_when_gone(control: Control, replies: Replies, tree: Tree) -> None:
    top = tree.start(name="top")
    kid = tree.start(parent=top.id, name="kid")
    admin(control, replies, "terminate", id=top.id, timeout=1.5)
    assert replies.raw == []
    tree.exit(kid.id)
    tree.exit(top.id)
    assert replies.only() == {"ok": True, "result": {"terminated": [kid.id, top.id]}}


# --- requests from VSMs -----------------------------------------------------------------------


def test_vsm_path_mismatch_is_unauthorized(
    control: Control, replies: Replies, tree: Tree, pool: FakePool
) -> None:
    alpha = tree.start(name="alpha")
    tree.start(name="beta")
    # alpha claims to speak from beta's routing key.
    from_vsm(control, replies, alpha.id, "beta", "spawn", name="kid")
    assert error_code(replies.only()) == "UNAUTHORIZED"
    assert len(pool.spawned) == 2


def test_unknown_vsm_is_unauthorized(control: Control, replies: Replies, pool: FakePool) -> None:
    from_vsm(control, replies, "ghost", "ghost", "spawn", name="kid")
    assert error_code(replies.only()) == "UNAUTHORIZED"
    assert pool.spawned == []


def test_spawn_from_a_vsm_spawns_under_it(
    control: Control, replies: Replies, tree: Tree, pool: FakePool, manager: SpawnManager
) -> None:
    alpha = tree.start(name="alpha")
    from_vsm(control, replies, alpha.id, "alpha", "spawn", name="kid", config={"x": 1})
    spec = pool.last
    assert spec.parent_id == alpha.id
    assert spec.path == "alpha.kid"
    assert spec.depth == 2
    assert spec.config == {"x": 1}
    assert replies.raw == []
    manager.on_spawned(spec.vsm_id, 77)
    manager.on_ready(spec.vsm_id, 77)
    reply = replies.only()
    assert reply["ok"] is True
    assert reply["result"]["parent"] == alpha.id
    assert manager.show(alpha.id).children == [spec.vsm_id]


def test_a_vsm_may_name_a_parent_in_its_subtree_only(
    control: Control, replies: Replies, tree: Tree, pool: FakePool
) -> None:
    alpha = tree.start(name="alpha")
    beta = tree.start(parent=alpha.id, name="beta")
    other = tree.start(name="other")
    spawned = len(pool.spawned)
    # Its sibling's subtree is not its own: refused, nothing forked.
    from_vsm(control, replies, alpha.id, "alpha", "spawn", name="kid", parent=other.id)
    assert error_code(replies.only()) == "UNAUTHORIZED"
    assert len(pool.spawned) == spawned
    # Its own child is: the grandchild is spawned under it.
    from_vsm(control, replies, alpha.id, "alpha", "spawn", name="grandkid", parent=beta.id)
    assert pool.last.parent_id == beta.id
    assert pool.last.path == "alpha.beta.grandkid"


def test_spawn_from_a_nested_vsm(
    control: Control, replies: Replies, tree: Tree, pool: FakePool
) -> None:
    alpha = tree.start(name="alpha")
    beta = tree.start(parent=alpha.id, name="beta")
    from_vsm(control, replies, beta.id, "alpha.beta", "spawn", name="gamma")
    assert pool.last.parent_id == beta.id
    assert pool.last.path == "alpha.beta.gamma"


def test_ready_from_a_vsm(
    control: Control, replies: Replies, manager: SpawnManager, pool: FakePool
) -> None:
    admin_replies = Replies()
    admin(control, admin_replies, "spawn", name="alpha")
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 900)
    from_vsm(control, replies, vsm_id, "alpha", "ready", pid=900)
    assert replies.raw == []  # a notification: no reply
    assert manager.show(vsm_id).status == "running"
    assert admin_replies.only()["ok"] is True


def test_ready_for_the_wrong_path_does_not_count(
    control: Control, replies: Replies, manager: SpawnManager, pool: FakePool
) -> None:
    manager.spawn_recursive_vsm(None, SpawnConfig(name="alpha"))
    vsm_id = pool.last.vsm_id
    from_vsm(control, replies, vsm_id, "beta", "ready", pid=900)
    assert error_code(replies.only()) == "UNAUTHORIZED"
    assert manager.show(vsm_id).status == "starting"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"garbage", "BAD_JSON"),
        (b'{"type": "spawn"}', "BAD_REQUEST"),
        (b'{"type": "spawn", "sender": "x", "body": []}', "BAD_REQUEST"),
    ],
)
def test_bad_envelopes_from_vsms(
    control: Control, replies: Replies, body: bytes, code: str
) -> None:
    control.handle_vsm("alpha", "spawn", body, replies)
    assert error_code(replies.only()) == code


def test_bad_spawn_body_from_a_vsm(
    control: Control, replies: Replies, tree: Tree, pool: FakePool
) -> None:
    alpha = tree.start(name="alpha")
    from_vsm(control, replies, alpha.id, "alpha", "spawn", name="kid", color="red")
    reply = replies.only()
    assert error_code(reply) == "BAD_REQUEST"
    assert reply["error"]["details"] == {"field": "color"}
    assert len(pool.spawned) == 1


def test_unknown_kind_from_a_vsm(control: Control, replies: Replies, tree: Tree) -> None:
    alpha = tree.start(name="alpha")
    from_vsm(control, replies, alpha.id, "alpha", "dance")
    assert error_code(replies.only()) == "BAD_REQUEST"


def test_spawn_from_a_starting_vsm_is_a_conflict(
    control: Control, replies: Replies, pool: FakePool, manager: SpawnManager
) -> None:
    admin(control, Replies(), "spawn", name="alpha")
    vsm_id = pool.last.vsm_id
    from_vsm(control, replies, vsm_id, "alpha", "spawn", name="kid")
    assert error_code(replies.only()) == "CONFLICT"
    assert len(pool.spawned) == 1
    assert manager.show(vsm_id).children == []


# --- supervision over the control plane -------------------------------------------------------


def test_admin_spawn_passes_the_policy(
    control: Control, replies: Replies, manager: SpawnManager, pool: FakePool
) -> None:
    admin(control, replies, "spawn", name="alpha", restart="permanent", memory_mb=64)
    assert pool.last.policy == {"restart": "permanent", "memory_mb": 64}
    vsm_id = pool.last.vsm_id
    manager.on_spawned(vsm_id, 55)
    manager.on_ready(vsm_id, 55)
    assert replies.only()["result"]["policy"] == {"restart": "permanent", "memory_mb": 64}


@pytest.mark.parametrize(
    ("args", "field"),
    [({"restart": "always"}, "restart"), ({"memory_mb": 0}, "memory_mb")],
)
def test_admin_spawn_with_a_bad_policy(
    control: Control, replies: Replies, pool: FakePool, args: dict[str, Any], field: str
) -> None:
    admin(control, replies, "spawn", **args)
    reply = replies.only()
    assert error_code(reply) == "BAD_REQUEST"
    assert reply["error"]["details"] == {"field": field}
    assert pool.spawned == []


def test_admin_events(control: Control, replies: Replies, tree: Tree) -> None:
    info = tree.start(name="alpha")
    tree.exit(info.id, code=1)  # transient: a restart is scheduled
    admin(control, replies, "events")
    admin(control, replies, "events", since=1, limit=5)
    every, later = replies.decoded
    assert every["ok"] is True
    kinds = [e["kind"] for e in every["result"]["events"]]
    assert kinds == ["restart_scheduled"]
    assert every["result"]["last_seq"] == 1
    assert every["result"]["events"][0]["vsm_id"] == info.id
    assert later["result"] == {"last_seq": 1, "events": []}


def test_failure_report_from_a_vsm(
    control: Control, replies: Replies, manager: SpawnManager, tree: Tree
) -> None:
    alpha = tree.start(name="alpha")
    from_vsm(control, replies, alpha.id, "alpha", "failed", reason="agent failed: KeyError: 'x'")
    assert replies.raw == []  # a notification: no reply
    tree.exit(alpha.id, code=4)
    assert manager.show(alpha.id).last_reason == (
        "exited on its own (exit code 4): agent failed: KeyError: 'x'"
    )


def test_spawn_from_a_vsm_passes_the_policy(
    control: Control, replies: Replies, tree: Tree, pool: FakePool
) -> None:
    alpha = tree.start(name="alpha")
    from_vsm(control, replies, alpha.id, "alpha", "spawn", name="kid", restart="temporary")
    assert pool.last.parent_id == alpha.id
    assert pool.last.policy == {"restart": "temporary"}


# --- unexpected exceptions: one INTERNAL reply each, never the daemon --------------------------


def bug(*_args: object, **_kwargs: object) -> Any:
    raise RuntimeError("a bug")


def assert_logged_traceback(caplog: pytest.LogCaptureFixture, what: str) -> None:
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == f"internal error while handling {what}"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def assert_internal(reply: dict[str, Any], what: str) -> None:
    assert error_code(reply) == "INTERNAL"
    assert reply["error"]["message"] == f"internal error while handling {what}; see the daemon log"


@pytest.mark.parametrize(
    ("method", "cmd", "args"),
    [
        ("show", "show", {"id": "x"}),
        ("list_dicts", "list", {}),
        ("spawn_recursive_vsm", "spawn", {"name": "a"}),
        ("terminate_child_vsm", "terminate", {"id": "x"}),
    ],
)
def test_a_bug_in_an_admin_handler_costs_one_internal_reply(
    control: Control,
    replies: Replies,
    manager: SpawnManager,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    cmd: str,
    args: dict[str, Any],
) -> None:
    monkeypatch.setattr(manager, method, bug)
    admin(control, replies, cmd, **args)
    assert_internal(replies.only(), cmd)
    assert_logged_traceback(caplog, cmd)
    admin(control, replies, "ping")  # and the next request is answered as usual
    assert replies.decoded[1]["ok"] is True


def test_a_spawn_that_fails_unexpectedly_gets_one_internal_reply(
    control: Control,
    replies: Replies,
    manager: SpawnManager,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fut: Future[VsmInfo] = Future()
    monkeypatch.setattr(manager, "spawn_recursive_vsm", lambda _p, _c: fut)
    admin(control, replies, "spawn", name="a")
    assert replies.raw == []
    fut.set_exception(RuntimeError("a bug"))
    assert_internal(replies.only(), "spawn")
    assert_logged_traceback(caplog, "spawn")


def test_a_result_that_cannot_be_shaped_still_gets_a_reply(
    control: Control,
    replies: Replies,
    manager: SpawnManager,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fut: Future[list[str]] = Future()
    monkeypatch.setattr(manager, "terminate_child_vsm", lambda _id, _t: fut)
    admin(control, replies, "terminate", id="x")
    fut.set_result([object()])  # type: ignore[list-item]  # orjson cannot encode it
    assert_internal(replies.only(), "terminate")
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == "internal error while answering terminate"


@pytest.mark.parametrize(
    ("kind", "method"), [("spawn", "spawn_recursive_vsm"), ("ready", "on_ready")]
)
def test_a_bug_in_a_vsm_request_costs_one_internal_reply(
    control: Control,
    replies: Replies,
    tree: Tree,
    manager: SpawnManager,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    method: str,
) -> None:
    alpha = tree.start(name="alpha")
    monkeypatch.setattr(manager, method, bug)
    body = {"name": "kid"} if kind == "spawn" else {"pid": 5}
    from_vsm(control, replies, alpha.id, "alpha", kind, **body)
    assert_internal(replies.only(), f"{kind} from VSM alpha")
    assert_logged_traceback(caplog, f"{kind} from VSM alpha")


def test_an_envelope_whose_type_is_not_its_keys_kind_is_refused(
    control: Control, replies: Replies, tree: Tree, pool: FakePool
) -> None:
    alpha = tree.start(name="alpha")
    spawned = len(pool.spawned)
    # A requester's liveness probe that reached the daemon's spawn key must not spawn.
    env = Envelope(type="probe", sender=alpha.id, path="alpha")
    control.handle_vsm("alpha", "spawn", env.encode(), replies)
    assert error_code(replies.only()) == "BAD_REQUEST"
    assert len(pool.spawned) == spawned
