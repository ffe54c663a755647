"""A secure vsmd for tests: its own embedded RabbitMQ node set up for the trust boundary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.harness import BIN, REPO, DaemonProc, new_namespace, poll_for
from vsmd.security import credentials


def start_secure_daemon(
    state: Path, config: str = "", namespace: str | None = None, broker: str = "embedded"
) -> DaemonProc:
    """``config``: more TOML lines for the [vsmd] table; ``broker``: the embedded node, or the
    URL of a broker `vsmd broker setup` prepared. The DaemonProc's URL is the operator's, so
    its client() and vsmctl() act as an operator."""
    ns = namespace or new_namespace()
    cfg = state / "vsmd.toml"
    cfg.write_text(f"[vsmd]\nstop_timeout = 5.0\n{config}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSM_")}
    env["PYTHONPATH"] = str(REPO)
    log_path = state / "vsmd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "vsmd"),
                "run",
                "--config",
                str(cfg),
                "--state-dir",
                str(state),
                "--namespace",
                ns,
                "--broker",
                broker,
                "--log-level",
                "DEBUG",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    op_file = credentials.credentials_file(state, "operator", ns)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"vsmd exited:\n{log_path.read_text()}")
        return op_file.exists() and "vsmd ready" in log_path.read_text()

    try:
        poll_for(up, 90.0, 0.2, "the secure daemon to start")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return DaemonProc(ns, credentials.read(op_file).broker_url, state, proc, log_path)
