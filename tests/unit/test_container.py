"""--broker docker without an engine: the request to the Docker SDK, checked at its API."""

from __future__ import annotations

from typing import Any
from unittest import mock

import docker
import docker.models.containers
import pytest

from vsmd.broker.container import IMAGE, LABEL, PLUGINS, DockerBroker, container_request
from vsmd.errors import BrokerError


def test_the_request_is_one_the_sdk_turns_into_a_container() -> None:
    kwargs = container_request("prod", "s3cret")
    # What containers.run hands to the engine's create call: the SDK refuses unknown or
    # misspelled arguments here (TypeError), and translates ports and the rest.
    run_only = {"detach", "auto_remove"}
    create = docker.models.containers._create_container_args(
        {k: v for k, v in kwargs.items() if k not in run_only}
        | {"auto_remove": True, "version": "1.44"}
    )
    assert create["image"] == IMAGE
    assert create["name"] == "vsmd-rabbitmq-prod"
    assert create["labels"] == {LABEL: "prod"}
    assert create["environment"] == {
        "RABBITMQ_DEFAULT_USER": "vsmd",
        "RABBITMQ_DEFAULT_PASS": "s3cret",
    }
    host = create["host_config"]
    assert host["AutoRemove"] is True
    # Published on the loopback only, on a port the engine picks.
    assert host["PortBindings"]["5672/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    script = create["command"][-1]
    assert all(p in script for p in PLUGINS) and script.endswith("rabbitmq-server")


class FakeContainer:
    def __init__(self, statuses: list[str]) -> None:
        self.name = "vsmd-rabbitmq-ns"
        self.statuses = statuses
        self.status = "created"
        self.ports: dict[str, Any] = {}
        self.stopped = 0

    def reload(self) -> None:
        self.status = self.statuses.pop(0) if self.statuses else self.status
        self.ports = {"5672/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32771"}]}

    def logs(self, tail: int) -> bytes:
        return b"BOOT FAILED\nno space left on device"

    def stop(self, timeout: int) -> None:
        self.stopped += 1


def _client(container: FakeContainer, leftovers: list[Any] | None = None) -> Any:
    # Spec'd from the SDK's own classes: a call the SDK does not have fails the test.
    client = mock.create_autospec(docker.DockerClient, instance=True)
    client.containers = mock.create_autospec(
        docker.models.containers.ContainerCollection, instance=True
    )
    client.containers.run.return_value = container
    client.containers.list.return_value = leftovers or []
    return client


def test_start_runs_the_request_and_waits_until_the_broker_answers() -> None:
    container = FakeContainer(["running"])
    client = _client(container, leftovers=[mock.Mock(name="old")])
    probes: list[str] = []

    def answers(url: str) -> bool:
        probes.append(url)
        return len(probes) >= 2

    box = DockerBroker("ns", client_factory=lambda: client, answers=answers)
    box.start()
    client.ping.assert_called_once_with()
    client.containers.list.assert_called_once_with(all=True, filters={"label": f"{LABEL}=ns"})
    client.containers.list.return_value[0].remove.assert_called_once_with(force=True)
    (call,) = client.containers.run.call_args_list
    password = call.kwargs["environment"]["RABBITMQ_DEFAULT_PASS"]
    assert call.kwargs == container_request("ns", password)
    assert len(password) >= 20
    assert box.url == f"amqp://vsmd:{password}@127.0.0.1:32771/%2F" == probes[-1]
    box.stop()
    box.stop()  # once only
    assert container.stopped == 1


def test_no_engine_is_one_clear_error() -> None:
    client = _client(FakeContainer([]))
    client.ping.side_effect = docker.errors.DockerException("Error while fetching ... (2, ...)")
    with pytest.raises(BrokerError, match=r"^no Docker engine answers at \S+$"):
        DockerBroker("ns", client_factory=lambda: client).start()
    client.containers.run.assert_not_called()


def test_a_container_that_dies_at_start_is_reported_with_its_log() -> None:
    container = FakeContainer(["running", "exited"])
    box = DockerBroker("ns", client_factory=lambda: _client(container), answers=lambda _: False)
    with pytest.raises(BrokerError, match="stopped: BOOT FAILED"):
        box.start()
    assert container.stopped == 1
