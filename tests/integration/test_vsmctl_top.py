"""vsmctl top as a person sees it: run in a terminal (tmux), read off the screen, Ctrl-C."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import uuid

from tests.support.harness import BIN, DaemonProc, poll_for
from tests.support.terminal import Terminal
from vsmd.protocol import Policy, SpawnConfig


def _row(screen: str, vsm_id: str) -> list[str]:
    lines = [line.split() for line in screen.splitlines() if line.startswith(vsm_id)]
    return lines[0] if lines else []


def test_top_shows_the_tree_live_and_quits_on_ctrl_c(daemon: DaemonProc) -> None:
    c = daemon.client()
    root = c.spawn_recursive_vsm(None, SpawnConfig(name="shop"))
    worker = c.spawn_recursive_vsm(
        root.id, SpawnConfig(name="worker", policy=Policy(restart="permanent"))
    )
    spare = c.spawn_recursive_vsm(root.id, SpawnConfig(name="spare"))
    top = shlex.quote(str(BIN / "vsmctl"))
    # The shell line after top shows how it ended, then waits so the pane stays readable.
    term = Terminal(daemon.env, f'{top} top; echo "top exited with $?"; read')
    try:

        def tree_shown(screen: str) -> bool:
            return f"namespace {daemon.namespace}" in screen and all(
                _row(screen, i.id)[2:4] == [str(i.pid), "running"] for i in (root, worker, spare)
            )

        screen = term.wait_for(tree_shown, "the three VSMs, running")
        assert "3 VSMs: 3 running" in screen and "sorted by tree" in screen
        assert "Alerts: none" in screen
        lines = screen.splitlines()
        # Tree order, children indented under their parent.
        order = [n for n, line in enumerate(lines) if line.startswith((root.id, worker.id))]
        assert _row(screen, root.id)[1] == "shop" and "  worker" in lines[order[1]]

        # A crash shows up by itself: a new pid, a restart, and the alert.
        os.kill(worker.pid or 0, signal.SIGKILL)

        def restarted(screen: str) -> bool:
            row = _row(screen, worker.id)
            return (
                len(row) >= 10
                and row[2] != str(worker.pid)
                and row[3:5] == ["running", "1"]
                and row[9] == "restart_scheduled"
            )

        screen = term.wait_for(restarted, "the worker's restart and its alert")
        assert "restart_scheduled" in screen.split("Alerts", 1)[1]

        term.keys("C-c")
        screen = term.wait_for(lambda s: "top exited with" in s, "top to exit on Ctrl-C")
        assert "top exited with 0" in screen
        assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
        # The alternate screen is gone: the terminal shows what it showed before top.
        assert "vsmd top" not in screen
    finally:
        term.close()


def test_top_once_prints_one_frame_sorted(daemon: DaemonProc) -> None:
    c = daemon.client()
    root = c.spawn_recursive_vsm(None, SpawnConfig(name="m"))
    kids = [c.spawn_recursive_vsm(root.id, SpawnConfig(name=n)) for n in ("zeta", "alpha", "kilo")]

    def order(*args: str) -> list[str]:
        res = daemon.vsmctl("top", "--once", *args)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("vsmd top - namespace") == 1
        ids = {i.id for i in (root, *kids)}
        return [line.split()[1] for line in res.stdout.splitlines() if line[:12] in ids]

    assert order() == ["m", "zeta", "alpha", "kilo"]
    assert order("--sort", "name") == ["m.alpha", "m.kilo", "m", "m.zeta"]
    assert order("--sort", "name", "--reverse") == ["m.zeta", "m", "m.kilo", "m.alpha"]
    assert order("--parent", root.id, "--sort", "path") == ["m.alpha", "m.kilo", "m.zeta"]


def test_top_shows_message_rates_that_the_vsms_report(daemon: DaemonProc) -> None:
    c = daemon.client()
    busy = c.spawn_recursive_vsm(None, SpawnConfig(name="busy"))
    quiet = c.spawn_recursive_vsm(None, SpawnConfig(name="quiet"))

    def reported() -> bool:
        for _ in range(20):  # answered: one in, one out each
            c.ping_vsm(busy.id)
        return bool(c.show(busy.id).metrics.get("msg_in", 0) > 0)

    poll_for(reported, 60, what="the busy VSM to report its rates (every 3.75-6.25 s)")
    info = c.show(busy.id)
    assert info.metrics["msg_in"] > 0 and info.metrics["msg_out"] > 0, info.metrics
    assert "msg_in" not in c.show(quiet.id).metrics  # idle: it never wrote any
    res = daemon.vsmctl("top", "--once", "--sort", "msgs")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(line for line in lines if "IN/s" in line)
    assert header.split()[-3:] == ["IN/s", "OUT/s", "ALERT"]
    rows = [line.split() for line in lines if line[:12] in (busy.id, quiet.id)]
    assert [r[0] for r in rows] == [busy.id, quiet.id]  # the busy one first
    assert float(rows[0][-2]) > 0 and rows[1][-2:] == ["-", "-"]


def test_top_without_a_daemon_exits_3_before_drawing(daemon: DaemonProc) -> None:
    env = dict(daemon.env, VSM_NAMESPACE=f"nobody{uuid.uuid4().hex[:8]}")
    for args in (["top", "--once"], ["top"]):
        res = subprocess.run(
            [str(BIN / "vsmctl"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 3, res.stderr
        assert res.stderr.startswith("vsmctl: no vsmd answering on namespace nobody")
        assert res.stdout == ""  # and it returned: a hang ends in the subprocess's timeout
