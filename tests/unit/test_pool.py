"""The daemon's handle on the fork server while none runs (no process is started here)."""

from __future__ import annotations

import time

import pytest

from vsmd.errors import SpawnError
from vsmd.spec import VsmSpec
from vsmd.supervisor.pool import ForkServerPool


def spec() -> VsmSpec:
    return VsmSpec(
        vsm_id="abc123",
        name="alpha",
        path="alpha",
        parent_id=None,
        depth=1,
        agent="noop",
        broker_url="amqp://x/",
        namespace="vsm",
    )


def test_a_spawn_without_a_fork_server_says_when_the_next_try_is() -> None:
    pool = ForkServerPool(lambda _ev: None)
    pool.retry_at = time.monotonic() + 4.5  # what the daemon sets when a start failed
    with pytest.raises(SpawnError) as refused:
        pool.spawn(spec())
    assert refused.value.code == "SPAWN_FAILED"
    assert refused.value.message == "the fork server is not running; retrying in 5 s"


def test_a_spawn_before_any_start_is_refused_plainly() -> None:
    with pytest.raises(SpawnError) as refused:
        ForkServerPool(lambda _ev: None).spawn(spec())
    assert refused.value.message == "the fork server is not running"
