"""``python -m vsmd.broker.ensure``: make sure the machine's RabbitMQ answers (used by make).

If nothing answers at VSM_BROKER_URL (default: localhost:5672) and rabbitmq-server is installed,
start it detached and wait for it. Exit 0 when a broker answers, 3 with one clear line when not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from vsmd.broker.probe import broker_answers
from vsmd.bus.connection import redact
from vsmd.config import DEFAULT_BROKER_URL


def ensure(url: str, wait: float = 60.0) -> bool:
    if broker_answers(url):
        return True
    server = shutil.which("rabbitmq-server")
    if server is None:
        return False
    print(f"no broker at {redact(url)}; starting rabbitmq-server -detached", file=sys.stderr)
    subprocess.run([server, "-detached"], check=False, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if broker_answers(url):
            return True
        time.sleep(0.5)
    return False


def main() -> int:
    url = os.environ.get("VSM_BROKER_URL") or DEFAULT_BROKER_URL
    if ensure(url):
        return 0
    print(
        f"no broker answers at {redact(url)} and none could be started: install RabbitMQ "
        "(apt-get install rabbitmq-server) or set VSM_BROKER_URL",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
