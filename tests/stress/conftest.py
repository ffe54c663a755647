"""The stress tests' private RabbitMQ node: hundreds of VSMs hold a connection each, more than
the shared broker's open-files limit allows, so they run on a node of their own (raised limit)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vsmd.broker.embedded import EmbeddedBroker


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path_factory.mktemp("rabbit"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
