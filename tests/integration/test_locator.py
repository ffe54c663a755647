"""vsmctl finds its daemon through the where-file it publishes, on a private node whose port
is new at every start, and ignores the file once the daemon is gone."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psutil
import pytest

from tests.support.harness import BIN, REPO, new_namespace, poll_for
from tests.support.secure import start_secure_daemon
from vsmd.locator import Where
from vsmd.security import credentials


def user_env(xdg: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no VSM_* at all, a runtime directory of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSM_")}
    env.update(XDG_RUNTIME_DIR=str(xdg), PYTHONPATH=str(REPO), **extra)
    return env


def vsmctl(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # cwd: not the repository, whose ./.state may hold a `make run` of the developer's.
    return subprocess.run(
        [str(BIN / "vsmctl"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def in_node(p: psutil.Process, node: str) -> bool:
    """A process of the embedded node (they all have its name in their environment); never
    epmd, which the shared broker's node uses too."""
    try:
        return p.name() != "epmd" and p.environ().get("RABBITMQ_NODENAME", "").startswith(node)
    except psutil.Error:
        return False


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_vsmctl_finds_an_embedded_daemon_and_not_a_killed_one(tmp_path: Path) -> None:
    ns, xdg, state = new_namespace(), private_dir(tmp_path / "xdg"), tmp_path / "state"
    state.mkdir()
    (state / "vsmd.toml").write_text('[vsmd]\ntrust = "cooperative"\nstop_timeout = 5.0\n')
    where_file = xdg / "vsmd" / f"where-{ns}.json"
    log_path = state / "vsmd.log"
    cmd = [str(BIN / "vsmd"), "run", "--config", str(state / "vsmd.toml"), "--broker"]
    cmd += ["embedded", "--namespace", ns, "--state-dir", str(state), "--log-level", "DEBUG"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=user_env(xdg), stdout=log, stderr=subprocess.STDOUT)
    node: list[psutil.Process] = []
    try:

        def published() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"vsmd exited:\n{log_path.read_text()}")
            return where_file.exists()

        poll_for(published, 90.0, 0.1, "vsmd to publish where it runs")
        where = Where.decode(where_file.read_bytes())
        assert where is not None and where.pid == proc.pid and where.credentials is None
        assert urlsplit(where.broker_url).port not in (None, 5672)  # the private node's
        env = user_env(xdg)
        ping = vsmctl(env, tmp_path, "ping")
        assert ping.returncode == 0 and f"answers on namespace {ns}" in ping.stdout, ping.stderr
        spawned = vsmctl(env, tmp_path, "spawn", "--name", "found", "-q")
        assert spawned.returncode == 0, spawned.stderr
        listed = vsmctl(env, tmp_path, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [v["name"] for v in orjson.loads(listed.stdout)] == ["found"]

        family = psutil.Process(proc.pid).children(recursive=True)
        node = [p for p in family if in_node(p, f"vsmd-{ns}")]
        ours = [p for p in family if p not in node]  # the fork server and the VSM
        assert node and len(ours) >= 2
        proc.kill()
        proc.wait(30)
        poll_for(lambda: all(gone(p) for p in ours), 30.0, what="the fork server and VSM to die")
        assert where_file.exists()  # left behind: nobody removed it
        res = vsmctl(env, tmp_path, "list", "--namespace", ns, "--timeout", "5")
        assert res.returncode == 3, (res.stdout, res.stderr)
        assert res.stderr.count("\n") == 1 and "localhost:5672" in res.stderr, res.stderr
        assert f"no vsmd answering on namespace {ns}" in res.stderr
        assert f"ignored, their daemon is gone: where-{ns}.json of pid {proc.pid}" in res.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for p in node:  # the node has no death signal: it would outlive the test
            with contextlib.suppress(psutil.Error):
                p.kill()
        poll_for(lambda: all(gone(p) for p in node), 30.0, what="the embedded node to die")


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_a_secure_daemon_publishes_no_password_and_vsmctl_logs_in_as_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = private_dir(tmp_path / "xdg")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))  # the daemon's
    (tmp_path / "state").mkdir()
    d = start_secure_daemon(tmp_path / "state")
    name = f"where-{d.namespace}.json"
    files = [xdg / "vsmd" / name, d.state_dir / name]
    try:
        passwords = [
            credentials.read(credentials.credentials_file(d.state_dir, role, d.namespace)).password
            for role in ("operator", "viewer")
        ]
        op_file = credentials.credentials_file(d.state_dir, "operator", d.namespace)
        for path in files:
            raw = path.read_bytes()
            where = Where.decode(raw)
            assert where is not None and where.credentials == str(op_file)
            assert "@" not in where.broker_url and b"vsmd-daemon" not in raw
            assert not any(pw.encode() in raw for pw in passwords)
        # Through the runtime directory; then through VSM_STATE_DIR alone. The namespace is
        # the test's, not the default: only the where-file can have told vsmctl.
        ping = vsmctl(user_env(xdg), tmp_path, "ping", "--json")
        assert ping.returncode == 0 and orjson.loads(ping.stdout)["namespace"] == d.namespace
        elsewhere = private_dir(tmp_path / "empty-xdg")
        env = user_env(elsewhere, VSM_STATE_DIR=str(d.state_dir))
        spawned = vsmctl(env, tmp_path, "spawn", "--name", "opdid", "-q")  # operators only
        assert spawned.returncode == 0, spawned.stderr
        done = vsmctl(env, tmp_path, "terminate", spawned.stdout.strip())
        assert done.returncode == 0, done.stderr
    finally:
        assert d.stop() == 0
    assert not any(path.exists() for path in files)  # a clean stop removes them
