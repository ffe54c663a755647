"""Shared fixtures. Tests that need the broker fail (never skip) when it is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.harness import DaemonProc, running_daemon, sweep_namespaces
from vsmd.broker.probe import broker_answers
from vsmd.config import DEFAULT_BROKER_URL

# Property tests draw the same examples on every run, so a run that passes passes again (CI);
# HYPOTHESIS_PROFILE=explore draws new ones each time, to hunt for more.
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def shared_broker_url() -> str:
    return os.environ.get("VSM_TEST_BROKER_URL", DEFAULT_BROKER_URL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave the shared broker as the run found it: no queue or exchange of a namespace a
    test used stays behind, whatever happened to the test's daemon."""
    sweep_namespaces(shared_broker_url())


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every daemon the tests start publishes where it runs (vsmd/locator.py) into this
    session's own runtime directory, not the developer's, where their vsmctl would see
    them."""
    path = tmp_path_factory.mktemp("xdg-runtime")
    path.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def broker_url() -> str:
    url = shared_broker_url()
    if not broker_answers(url, timeout=5.0):
        pytest.fail(
            f"no RabbitMQ answers at {url}: start it (rabbitmq-server -detached) or run "
            "`make test`, which does",
            pytrace=False,
        )
    return url


@pytest.fixture
def daemon(broker_url: str, tmp_path: Path) -> Iterator[DaemonProc]:
    with running_daemon(broker_url, tmp_path / "state") as d:
        yield d
