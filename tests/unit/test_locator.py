"""Where-files: published privately, found by vsmctl, stale ones and unsafe places ignored."""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vsmctl.client import VsmClient
from vsmctl.discover import resolve
from vsmd import locator
from vsmd.config import Config
from vsmd.daemon.announce import announce
from vsmd.errors import ConfigError
from vsmd.locator import Where, locate, publish, refusal, remove, runtime_dir
from vsmd.security import credentials

NO_SUCH_PID = 2**22 + 1  # above the largest pid_max Linux allows
COOP_URL = "amqp://guest:guest@127.0.0.1:4321/%2F"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A runtime directory and a state directory of the test's own, and no other place that
    locate would search (./.state is the test's, /var/lib/vsmd is left out)."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locator, "STATE_DIRS", (".state",))
    yield {"XDG_RUNTIME_DIR": str(xdg), "VSM_STATE_DIR": str(state)}


def where_of(
    pid: int, namespace: str = "vsm", state_dir: str = "/nowhere", started: float | None = None
) -> Where:
    if started is None:
        started = psutil.Process(pid).create_time() if pid != NO_SUCH_PID else 1.0
    return Where(namespace, COOP_URL, None, pid, started, state_dir, "0.1.0")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_publish_writes_both_files_private_and_remove_deletes_them(
    env: dict[str, str],
) -> None:
    me = where_of(os.getpid(), state_dir=env["VSM_STATE_DIR"])
    paths = publish(me, env)
    rdir = Path(env["XDG_RUNTIME_DIR"]) / "vsmd"
    assert paths == (Path(env["VSM_STATE_DIR"]) / "where-vsm.json", rdir / "where-vsm.json")
    assert mode(rdir) == 0o700
    for path in paths:
        assert mode(path) == 0o600
        assert Where.decode(path.read_bytes()) == me
    assert locate(env, None).where == me
    remove(paths, me)
    assert not any(p.exists() for p in paths)
    assert locate(env, None).where is None


def test_remove_leaves_the_file_of_a_daemon_that_came_later(env: dict[str, str]) -> None:
    old = where_of(os.getpid(), state_dir=env["VSM_STATE_DIR"], started=5.0)
    paths = publish(old, env)
    new = where_of(os.getpid(), state_dir=env["VSM_STATE_DIR"])
    publish(new, env)
    remove(paths, old)
    assert all(Where.decode(p.read_bytes()) == new for p in paths)


def test_the_runtime_directory_is_xdgs_else_one_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "vsmd"
    # A uid nobody has has no /run/user/<uid>; a relative XDG_RUNTIME_DIR counts as none.
    monkeypatch.setattr(os, "geteuid", lambda: 4_000_000_000)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert runtime_dir({"XDG_RUNTIME_DIR": "rel"}) == tmp_path / "vsmd-4000000000"
    assert runtime_dir({}) == tmp_path / "vsmd-4000000000"


def test_a_runtime_directory_open_to_others_is_neither_written_nor_read(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    rdir = Path(env["XDG_RUNTIME_DIR"]) / "vsmd"
    rdir.mkdir(mode=0o755)
    rdir.chmod(0o755)
    planted = where_of(os.getpid(), namespace="planted")
    (rdir / "where-planted.json").write_bytes(planted.encode())
    (rdir / "where-planted.json").chmod(0o600)
    paths = publish(where_of(os.getpid(), state_dir=env["VSM_STATE_DIR"]), env)
    assert paths == (Path(env["VSM_STATE_DIR"]) / "where-vsm.json",)
    assert "its mode is 755, not 700" in caplog.text
    assert not (rdir / "where-vsm.json").exists()
    assert locate(env, "planted").where is None


def test_a_foreign_or_symlinked_runtime_directory_is_refused(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    rdir = Path(env["XDG_RUNTIME_DIR"]) / "vsmd"
    rdir.symlink_to(mine)
    assert refusal(rdir, create=True) == "it is not a directory"
    rdir.unlink()
    rdir.mkdir(mode=0o700)
    assert refusal(rdir) is None
    owner = rdir.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # as another user sees it
    assert refusal(rdir, create=True) == f"it belongs to uid {owner}"
    assert publish(where_of(os.getpid(), state_dir=env["VSM_STATE_DIR"]), env) == (
        Path(env["VSM_STATE_DIR"]) / "where-vsm.json",
    )
    assert list(rdir.iterdir()) == []


def test_a_dead_pid_or_a_reused_one_is_stale(env: dict[str, str]) -> None:
    state = env["VSM_STATE_DIR"]
    publish(where_of(NO_SUCH_PID, namespace="gone", state_dir=state), env)
    reused = where_of(os.getpid(), namespace="reused", state_dir=state)
    publish(dataclasses.replace(reused, started=reused.started - 100.0), env)
    for ns in ("gone", "reused"):
        found = locate(env, ns)
        assert found.where is None and [w.namespace for w in found.stale] == [ns]
    found = locate(env, None)
    assert found.where is None and len(found.stale) == 2  # each once, though in two places
    text = found.describe()
    assert f"no running vsmd published itself in {env['XDG_RUNTIME_DIR']}/vsmd, " in text
    assert f"where-gone.json of pid {NO_SUCH_PID}" in text


def test_the_namespace_asked_for_else_the_only_one_else_vsm_else_the_newest(
    env: dict[str, str],
) -> None:
    state = env["VSM_STATE_DIR"]
    oldest = where_of(1, namespace="b", state_dir=state)
    newest = where_of(os.getpid(), namespace="a", state_dir=state)
    paths = publish(newest, env)
    assert locate(env, None).where == newest  # the only one
    publish(oldest, env)
    assert locate(env, "b").where == oldest
    assert locate(env, None).where == newest  # no `vsm`: the newest
    vsm = where_of(os.getppid(), namespace="vsm", state_dir=state)
    publish(vsm, env)
    assert locate(env, None).where == vsm
    assert locate(env, "nosuch").where is None
    remove(paths, newest)
    assert locate(env, "a").where is None


def test_unreadable_or_unsafe_files_are_ignored(env: dict[str, str], tmp_path: Path) -> None:
    state = Path(env["VSM_STATE_DIR"])
    good = where_of(os.getpid(), namespace="good")
    (tmp_path / "good.json").write_bytes(good.encode())
    (tmp_path / "good.json").chmod(0o600)
    files = {  # what a where-file holds, and its mode
        "open": (good.encode(), 0o644),  # others could have written it
        "noread": (good.encode(), 0o000),
        "garbage": (b"{not json", 0o600),
        "partial": (b'{"namespace": "x", "pid": 1}', 0o600),
    }
    for name, (data, perms) in files.items():
        (state / f"where-{name}.json").write_bytes(data)
        (state / f"where-{name}.json").chmod(perms)
    (state / "where-symlink.json").symlink_to(tmp_path / "good.json")
    (state / "where-dir.json").mkdir(mode=0o700)
    for name in (*files, "symlink", "dir"):
        assert locate(env, name).where is None, name
    assert locate(env, None).where is None
    assert Where.decode(b"[]") is None and Where.decode(b"\xff") is None


def test_a_secure_daemon_publishes_no_login_and_vsmctl_logs_in_as_operator(
    env: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "secure"
    state.mkdir()
    op = credentials.write(state, "operator", "sec", "vsmd-operator", "op-pw", "amqp://h:1/vsmd")
    config = Config(
        namespace="sec",
        state_dir=state,
        broker_url="amqp://vsmd-daemon:daemon-pw@127.0.0.1:5999/vsmd",
    )
    announced = announce(config, True, env)
    for path in announced.paths:
        text = path.read_text()
        assert "pw" not in text and "vsmd-daemon" not in text
    assert announced.where.broker_url == "amqp://127.0.0.1:5999/vsmd"
    assert announced.where.credentials == str(op)
    target = resolve(None, None, env)
    # The operator's login, on the port the daemon runs on now (the file said 1).
    assert target.broker_url == "amqp://vsmd-operator:op-pw@127.0.0.1:5999/vsmd"
    assert target.namespace == "sec" and target.credentials is not None
    assert target.credentials.role == "operator"
    announced.withdraw()
    assert not any(p.exists() for p in announced.paths)


def test_a_cooperative_daemon_publishes_its_url_as_it_is(env: dict[str, str]) -> None:
    url = "amqp://guest:guest@127.0.0.1:5998/%2F"
    announced = announce(Config(namespace="coop", broker_url=url), False, env)
    assert announced.where.broker_url == url and announced.where.credentials is None
    assert announced.where.state_dir == str(Config().state_dir.absolute())
    assert resolve(None, None, env).broker_url == url
    announced.withdraw()


def test_a_url_or_credentials_given_win_over_where_files(env: dict[str, str]) -> None:
    publish(where_of(os.getpid(), state_dir=env["VSM_STATE_DIR"]), env)
    given = resolve("amqp://u:p@elsewhere:1/%2F", None, env)
    assert given.broker_url == "amqp://u:p@elsewhere:1/%2F" and given.located is None
    from_env = resolve(None, None, {**env, "VSM_BROKER_URL": "amqp://e:f@env:2/%2F"})
    assert from_env.broker_url == "amqp://e:f@env:2/%2F" and from_env.located is None
    with pytest.raises(ConfigError, match="cannot read credentials /nonexistent"):
        resolve(None, None, {**env, "VSM_CREDENTIALS": "/nonexistent"})
    assert resolve(None, None, env).broker_url == COOP_URL


def test_no_daemon_says_where_vsmctl_looked(env: dict[str, str]) -> None:
    client = VsmClient(env=env)
    message = client._no_daemon("cannot connect").message
    assert message.startswith(
        "no vsmd answering on namespace vsm at broker amqp://guest:***@localhost:5672/%2F "
        f"(cannot connect); no running vsmd published itself in {env['XDG_RUNTIME_DIR']}/vsmd"
    )
    named = VsmClient("amqp://guest:guest@localhost:5672/%2F", env=env)
    assert "published" not in named._no_daemon().message  # a URL given: nothing was searched
