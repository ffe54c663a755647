"""Admission control: token buckets overall and per parent, and a floor on free host memory."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.conftest import MakeManager
from tests.unit.fakes import FakeClock, FakePool, HostMemory, Tree, events_of
from tests.unit.helpers import refusal, spawn
from vsmd.config import Config
from vsmd.daemon.throttle import Admission, TokenBucket
from vsmd.errors import QuotaExceeded, Throttled


def test_bucket_starts_full_and_refills_at_its_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert bucket.wait_time() == 0.0 and bucket.tokens == 3.0
    for _ in range(3):
        assert bucket.wait_time() == 0.0
        bucket.take()
    assert bucket.wait_time() == pytest.approx(0.5)  # one token at 2 per second
    clock.advance(0.25)
    assert bucket.wait_time() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.wait_time() == 0.0
    assert bucket.tokens < 3.0
    clock.advance(1.0)
    assert bucket.wait_time() == 0.0 and bucket.tokens == 3.0
    clock.advance(100.0)
    assert bucket.tokens == 3.0  # never more than the burst


def test_bucket_wait_time_grows_with_the_debt(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=4.0, burst=1, clock=clock)
    bucket.take()
    bucket.take()  # admission never does this, but the arithmetic holds
    assert bucket.wait_time() == pytest.approx(0.5)


def admission(clock: FakeClock, free_mb: float = 10_000.0, **overrides: Any) -> Admission:
    return Admission(Config(**overrides), clock=clock, available_mb=HostMemory(free_mb))


def test_overall_rate(clock: FakeClock) -> None:
    adm = admission(clock, spawn_rate=1.0, spawn_burst=2)
    adm.admit(None)
    adm.admit("p")
    with pytest.raises(Throttled) as info:
        adm.admit(None)
    err = info.value
    assert err.code == "THROTTLED"
    assert err.retry_after == pytest.approx(1.0)
    assert err.details["limit"] == "spawn_rate"
    assert "overall spawn rate" in err.message
    clock.advance(0.999)
    with pytest.raises(Throttled):
        adm.admit("q")
    clock.advance(0.001)
    adm.admit(None)


def test_per_parent_rate(clock: FakeClock) -> None:
    adm = admission(clock, parent_spawn_rate=0.5, parent_spawn_burst=1)
    adm.admit("p")
    with pytest.raises(Throttled) as info:
        adm.admit("p")
    assert info.value.retry_after == pytest.approx(2.0)
    assert info.value.details["limit"] == "parent_spawn_rate"
    assert "this parent" in info.value.message
    adm.admit("q")  # every parent has a bucket of its own
    adm.admit(None)  # and the top level has none
    adm.admit(None)
    clock.advance(2.0)
    adm.admit("p")


def test_a_refused_admission_takes_no_token(clock: FakeClock) -> None:
    adm = admission(
        clock, spawn_rate=1.0, spawn_burst=1, parent_spawn_rate=1.0, parent_spawn_burst=1
    )
    adm.admit("p")  # both buckets empty now
    clock.advance(0.5)
    with pytest.raises(Throttled):
        adm.admit("p")
    clock.advance(0.5)
    adm.admit("p")  # the refusal half way did not push the wait further


def test_low_host_memory(clock: FakeClock) -> None:
    free = HostMemory(100.0)
    adm = Admission(Config(min_available_mb=256, spawn_burst=1), clock=clock, available_mb=free)
    with pytest.raises(Throttled) as info:
        adm.admit(None)
    err = info.value
    assert err.retry_after == 1.0
    assert err.details == {
        "retry_after": 1.0,
        "limit": "min_available_mb",
        "available_mb": 100,
        "min_available_mb": 256,
    }
    assert "100 MiB available < min_available_mb 256" in err.message
    free.mb = 256.0
    adm.admit(None)  # the refusal took no token: the burst of 1 is still there


def test_forget_drops_a_parents_bucket(clock: FakeClock) -> None:
    adm = admission(clock, parent_spawn_rate=0.001, parent_spawn_burst=1)
    adm.admit("p")
    assert "p" in adm.per_parent
    adm.forget("p")
    adm.forget("never-seen")
    assert "p" not in adm.per_parent
    adm.admit("p")


# --- through the SpawnManager -----------------------------------------------------------------


def test_throttled_spawn_is_refused_with_an_event(
    make_manager: MakeManager, pool: FakePool
) -> None:
    manager = make_manager(spawn_rate=0.5, spawn_burst=1)
    Tree(manager, pool).start(name="a")
    err = refusal(spawn(manager, name="b"), Throttled)
    assert isinstance(err, Throttled)
    assert err.retry_after == pytest.approx(2.0)
    assert len(pool.spawned) == 1
    assert len(manager.registry) == 1
    [event] = events_of(manager, "throttled")
    assert event.message == err.message
    assert event.details["limit"] == "spawn_rate"
    assert event.details["retry_after"] == 2.0


def test_low_memory_spawn_is_refused(
    make_manager: MakeManager, pool: FakePool, memory: HostMemory
) -> None:
    manager = make_manager(min_available_mb=512)
    memory.mb = 511.0
    err = refusal(spawn(manager, name="a"), Throttled)
    assert err.details["limit"] == "min_available_mb"
    assert pool.spawned == []
    memory.mb = 512.0
    assert not spawn(manager, name="a").done()


def test_another_refusal_does_not_use_up_a_token(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(max_children=1, spawn_rate=0.001, spawn_burst=3)
    tree = Tree(manager, pool)
    top = tree.start(name="top")  # token 1
    tree.start(parent=top.id, name="c1")  # token 2
    refusal(spawn(manager, parent=top.id, name="c2"), QuotaExceeded)  # max_children: no token
    tree.start(name="other")  # token 3 is still there
    refusal(spawn(manager, name="more"), Throttled)


def test_a_removed_parent_forgets_its_bucket(make_manager: MakeManager, pool: FakePool) -> None:
    manager = make_manager(parent_spawn_rate=0.001, parent_spawn_burst=1)
    tree = Tree(manager, pool)
    parent = tree.start(name="p")
    kid = tree.start(parent=parent.id, name="k")
    assert parent.id in manager.admission.per_parent
    refusal(spawn(manager, parent=parent.id, name="k2"), Throttled)
    manager.terminate_child_vsm(parent.id)
    tree.exit(kid.id)
    assert parent.id in manager.admission.per_parent  # until it is gone
    tree.exit(parent.id)
    assert len(manager.registry) == 0
    assert manager.admission.per_parent == {}
