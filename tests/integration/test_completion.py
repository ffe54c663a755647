"""Shell completion of VSM ids: from a real daemon, and nothing (at once, silently) without."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

import pytest
import typer
from typer.main import get_command

from tests.support.harness import BIN, DaemonProc, new_namespace
from tests.support.terminal import Terminal
from vsmctl.app import app
from vsmctl.complete import COMPLETION_TIMEOUT, complete_vsm_id
from vsmd.protocol import SpawnConfig

NO_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens on port 1


def _ctx(broker: str, namespace: str) -> typer.Context:
    """The context the shell's completion request builds from ``--broker ... --namespace ...``."""
    ctx = typer.Context(get_command(app))
    ctx.params = {"broker": broker, "namespace": namespace}
    return ctx


def test_ids_complete_from_the_daemon_with_their_paths(daemon: DaemonProc) -> None:
    c = daemon.client()
    root = c.spawn_recursive_vsm(None, SpawnConfig(name="sales"))
    emea = c.spawn_recursive_vsm(root.id, SpawnConfig(name="emea"))
    ops = c.spawn_recursive_vsm(None, SpawnConfig(name="ops"))
    ctx = _ctx(daemon.broker_url, daemon.namespace)

    assert complete_vsm_id(ctx, "") == [
        (root.id, "sales"),
        (emea.id, "sales.emea"),
        (ops.id, "ops"),
    ]
    assert complete_vsm_id(ctx, emea.id[:5]) == [(emea.id, "sales.emea")]
    assert complete_vsm_id(ctx, "nothing-starts-so") == []


@pytest.mark.parametrize(
    "where", ["no daemon on the namespace", "no broker at the URL"], ids=["no-daemon", "no-broker"]
)
def test_without_a_daemon_completion_is_empty_fast_and_silent(
    broker_url: str, where: str, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = NO_BROKER if where == "no broker at the URL" else broker_url
    got: list[list[object]] = []
    worker = threading.Thread(
        target=lambda: got.append(list(complete_vsm_id(_ctx(broker, new_namespace()), "")))
    )
    worker.start()
    # It gives up by itself after COMPLETION_TIMEOUT; this only catches a hang, not speed.
    worker.join(COMPLETION_TIMEOUT + 30)
    assert not worker.is_alive() and got == [[]]
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def _bash_complete(env: dict[str, str], line: str) -> subprocess.CompletedProcess[str]:
    """What bash's completion function runs on Tab (the script `vsmctl --install-completion`
    installs): the words so far, the index of the word being completed."""
    words = line.split(" ")
    env = dict(
        env, _VSMCTL_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(len(words) - 1)
    )
    return subprocess.run(
        [str(BIN / "vsmctl")], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_bash_gets_the_ids_and_no_daemon_gets_nothing(daemon: DaemonProc) -> None:
    c = daemon.client()
    a = c.spawn_recursive_vsm(None, SpawnConfig(name="a"))
    b = c.spawn_recursive_vsm(a.id, SpawnConfig(name="b"))
    res = _bash_complete(daemon.env, "vsmctl show ")
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.split() == [a.id, b.id]
    res = _bash_complete(daemon.env, f"vsmctl top --parent {b.id[:4]}")
    assert res.stdout.split() == [b.id]

    # A hang would end in the subprocess's timeout.
    res = _bash_complete(dict(daemon.env, VSM_BROKER_URL=NO_BROKER), "vsmctl terminate ")
    # typer ends even an empty answer with a newline; bash reads that as no candidates.
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "", "")


def test_tab_in_bash_completes_an_id(daemon: DaemonProc) -> None:
    c = daemon.client()
    a = c.spawn_recursive_vsm(None, SpawnConfig(name="north"))
    b = c.spawn_recursive_vsm(a.id, SpawnConfig(name="east"))
    env = dict(daemon.env, PATH=f"{BIN}:{daemon.env['PATH']}")
    term = Terminal(env, "bash --norc --noprofile")
    try:
        # The line README gives for bash, in a shell with a prompt that is easy to find.
        term.keys("PS1='$ '; eval \"$(_VSMCTL_COMPLETE=source_bash vsmctl)\"; clear", "Enter")
        term.wait_for(lambda s: s.strip() == "$", "a clear prompt")
        term.keys(f"vsmctl show {b.id[:4]}")
        # Completion gives up after COMPLETION_TIMEOUT on a busy machine, as a person would
        # see: press Tab again, up to a few times.
        _tab_until(term, ["Tab"], lambda s: f"$ vsmctl show {b.id}" in s, "the id completed")
        # Two candidates: a second Tab lists them.
        term.keys("C-u", "vsmctl state --json ")
        _tab_until(term, ["Tab", "Tab"], lambda s: a.id in s and b.id in s, "both ids listed")
    finally:
        term.close()


def _tab_until(term: Terminal, keys: list[str], check: Callable[[str], bool], what: str) -> None:
    for attempt in range(5):
        term.keys(*keys)
        try:
            term.wait_for(check, what, timeout=COMPLETION_TIMEOUT + 5)
            return
        except AssertionError:
            if attempt == 4:
                raise
