"""Small helpers shared by the SpawnManager tests."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from vsmd.daemon.registry import Status
from vsmd.daemon.spawn_manager import SpawnManager
from vsmd.errors import VsmdError
from vsmd.protocol import Policy, SpawnConfig, VsmInfo


def error_of(fut: Future[Any]) -> BaseException:
    assert fut.done(), "the future is still pending"
    exc = fut.exception(timeout=0)
    assert exc is not None, f"expected a failure, got {fut.result()!r}"
    return exc


def refusal(fut: Future[Any], cls: type[VsmdError]) -> VsmdError:
    exc = error_of(fut)
    assert type(exc) is cls, repr(exc)
    assert isinstance(exc, VsmdError)
    return exc


def spawn(
    manager: SpawnManager,
    parent: str | None = None,
    name: str | None = None,
    agent: str | None = None,
    policy: Policy | None = None,
    **settings: Any,
) -> Future[VsmInfo]:
    return manager.spawn_recursive_vsm(
        parent,
        SpawnConfig(name=name, agent=agent, settings=settings, policy=policy or Policy()),
    )


def status(manager: SpawnManager, vsm_id: str) -> Status:
    return manager.registry.get(vsm_id).status
