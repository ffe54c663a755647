"""``vsmd run --broker docker``: a RabbitMQ container for this daemon, through the Docker SDK.

Like the embedded node, it lives as long as the daemon: started before the daemon connects,
stopped (and removed) when it exits. The ``docker`` package is an optional extra
(``pip install 'vsmd[docker]'``); everything the SDK is asked for is built by
``container_request`` so it can be checked without an engine.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from vsmd.broker.probe import broker_answers
from vsmd.errors import BrokerError

IMAGE = "rabbitmq:3.13-management"
# Management for operators; the OAuth 2 backend for the trust boundary's per-VSM tokens.
PLUGINS = ("rabbitmq_management", "rabbitmq_auth_backend_oauth2")
USER = "vsmd"
LABEL = "io.vsmd.namespace"
START_TIMEOUT = 90.0  # a first start pulls the image
log = logging.getLogger("vsmd")


def container_request(namespace: str, password: str, image: str = IMAGE) -> dict[str, Any]:
    """The keyword arguments of ``DockerClient.containers.run`` for the namespace's broker."""
    plugins = " ".join(PLUGINS)
    return {
        "image": image,
        "name": f"vsmd-rabbitmq-{namespace}",
        # The image's entry point runs any other command as it is: enable the plugins offline,
        # then start the server the way the image would.
        "command": [
            "bash",
            "-c",
            f"rabbitmq-plugins enable --offline {plugins} && exec docker-entrypoint.sh "
            "rabbitmq-server",
        ],
        # guest may only log in from inside the container: a user of our own, a fresh password.
        "environment": {"RABBITMQ_DEFAULT_USER": USER, "RABBITMQ_DEFAULT_PASS": password},
        # A free port on the host's loopback, as the embedded node uses.
        "ports": {"5672/tcp": ("127.0.0.1", None), "15672/tcp": ("127.0.0.1", None)},
        "labels": {LABEL: namespace},
        "detach": True,
        "auto_remove": True,
    }


def _default_client() -> Any:
    try:
        import docker
    except ImportError:
        raise BrokerError(
            "--broker docker needs the Docker SDK: pip install 'vsmd[docker]'"
        ) from None
    try:
        return docker.from_env(timeout=10)
    except docker.errors.DockerException:
        raise _no_engine() from None


def _no_engine() -> BrokerError:
    # The SDK's own message is a nest of requests' errors; where it looked is what helps.
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return BrokerError(f"no Docker engine answers at {host}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class DockerBroker:
    """A RabbitMQ container for one namespace; ``url`` once ``start`` has returned."""

    def __init__(
        self,
        namespace: str,
        client_factory: Callable[[], Any] = _default_client,
        answers: Callable[[str], bool] = broker_answers,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.namespace = namespace
        self._client_factory = client_factory
        self._answers = answers
        self._start_timeout = start_timeout
        self._container: Any = None
        self.url = ""

    def start(self) -> None:
        client = self._client_factory()
        try:
            client.ping()
        except Exception:  # the SDK raises requests' and its own errors here
            raise _no_engine() from None
        self._remove_leftover(client)
        password = secrets.token_urlsafe(18)
        try:
            self._container = client.containers.run(**container_request(self.namespace, password))
            self._container.reload()  # the host ports are known once it runs
            port = self._container.ports["5672/tcp"][0]["HostPort"]
        except Exception as exc:
            self.stop()
            raise BrokerError(f"cannot start a RabbitMQ container: {_first_line(exc)}") from None
        self.url = f"amqp://{USER}:{password}@127.0.0.1:{port}/%2F"
        self._wait_ready()

    def _remove_leftover(self, client: Any) -> None:
        # A container of a daemon killed with SIGKILL: replaced, as the embedded node is.
        for old in client.containers.list(all=True, filters={"label": f"{LABEL}={self.namespace}"}):
            log.info("removing the RabbitMQ container %s left by an earlier vsmd", old.name)
            old.remove(force=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not self._answers(self.url):
            self._container.reload()
            if self._container.status not in ("created", "running"):
                tail = self._container.logs(tail=10).decode(errors="replace").strip()
                self.stop()
                raise BrokerError(f"the RabbitMQ container stopped: {tail[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"the RabbitMQ container did not answer in {self._start_timeout:.0f} s"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            container.stop(timeout=int(timeout))  # auto_remove takes it away
        except Exception as exc:  # already gone, or the engine went away: nothing to stop
            log.warning("could not stop the RabbitMQ container: %s", _first_line(exc))
