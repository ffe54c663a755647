"""A private RabbitMQ node really starts, serves, stops cleanly and restarts on the same URL."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pika
import psutil
import pytest

from vsmd.broker.embedded import HANDSHAKE_TIMEOUT_MS, EmbeddedBroker, _tool
from vsmd.broker.probe import broker_answers, tcp_answers
from vsmd.errors import BrokerError

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
HANDSHAKE_EXPR = "application:get_env(rabbit, handshake_timeout)."


def node_processes(name: str, base_dir: Path) -> list[psutil.Process]:
    """Live processes belonging to the node; beam.smp's cmdline lacks the node name in 3.10,
    so the environment and the -home argument are checked too."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(p.cmdline())
            env = p.environ()
        except psutil.Error:
            continue
        if name in cmdline or str(base_dir) in cmdline or env.get("RABBITMQ_NODENAME") == name:
            found.append(p)
    return found


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def declare(url: str, queue: str, passive: bool = False) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().queue_declare(queue=queue, durable=True, passive=passive)
    finally:
        conn.close()


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_start_stop_restart_on_same_url(tmp_path: Path) -> None:
    shared_before = broker_answers(SHARED_URL)
    broker = EmbeddedBroker(tmp_path / "node", name="vsmd-test-restart")
    spec = broker.spec
    assert spec.name == "vsmd-test-restart@localhost"
    assert spec.port not in (5672, spec.dist_port)
    assert broker.url == f"amqp://guest:guest@127.0.0.1:{spec.port}/%2F"
    assert not broker.is_running()
    try:
        broker.start()
        assert broker.is_running()
        assert broker_answers(broker.url)
        broker.start()  # idempotent
        declare(broker.url, "vsmd.test.durable")
        assert (spec.base_dir / "home" / ".erlang.cookie").exists()
        running = node_processes(spec.name, spec.base_dir)
        assert any(p.name() == "beam.smp" for p in running)  # the check below is not vacuous

        broker.stop()
        assert not broker.is_running()
        assert not tcp_answers("127.0.0.1", spec.port)
        assert eventually(lambda: not node_processes(spec.name, spec.base_dir))
        broker.stop()  # idempotent

        broker.start()
        assert broker.spec == spec
        assert broker_answers(broker.url)
        declare(broker.url, "vsmd.test.durable", passive=True)  # same mnesia survived
    finally:
        broker.stop()
    assert not tcp_answers("127.0.0.1", spec.port)
    assert eventually(lambda: not node_processes(spec.name, spec.base_dir))
    assert broker_answers(SHARED_URL) == shared_before


def test_context_manager_and_default_name(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path) as broker:
        assert broker.spec.name.startswith("vsmd-")
        assert broker.spec.name.endswith("@localhost")
        assert broker_answers(broker.url)
        # The node in effect, not only its file: a burst of spawns on a small machine must not
        # lose VSMs to the broker's 10 s default.
        setting = subprocess.run(
            [_tool("rabbitmqctl"), "-n", broker.spec.name, "eval", HANDSHAKE_EXPR],
            env=broker._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert setting.stdout.strip() == f"{{ok,{HANDSHAKE_TIMEOUT_MS}}}", setting
        name, base = broker.spec.name, broker.spec.base_dir
    assert not broker.is_running()
    assert eventually(lambda: not node_processes(name, base))


def test_stop_falls_back_to_signals_when_rabbitmqctl_cannot_talk(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path, name="vsmd-test-nocookie")
    broker.start()
    spec = broker.spec
    try:
        # rabbitmqctl will mint a fresh cookie that the running node rejects.
        (spec.base_dir / "home" / ".erlang.cookie").unlink()
        began = time.monotonic()
        broker.stop(timeout=20.0)
        assert time.monotonic() - began < 15.0
    finally:
        broker.stop()
    assert not tcp_answers("127.0.0.1", spec.port)
    assert eventually(lambda: not node_processes(spec.name, spec.base_dir))


def test_taken_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(tmp_path, port=port)
        with pytest.raises(BrokerError, match=str(port)):
            broker.start()
        assert not broker.is_running()


def test_start_timeout_cleans_up_and_explains(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path, name="vsmd-test-slow", start_timeout=0.5)
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert "vsmd-test-slow@localhost" in message
    assert str(broker.console_log) in message
    assert not broker.is_running()
    assert eventually(lambda: not node_processes(broker.spec.name, broker.spec.base_dir))
    assert not tcp_answers("127.0.0.1", broker.spec.port)


def test_probes_say_no_to_a_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not tcp_answers("127.0.0.1", port)
    assert not broker_answers(f"amqp://guest:guest@127.0.0.1:{port}/%2F", timeout=0.5)
