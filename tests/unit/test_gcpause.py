"""`list` is built (daemon) and decoded (VsmClient) with the cyclic GC paused, and the GC is
always put back as it was."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from vsmd.daemon.control import Control
from vsmd.gcpause import gc_paused
from vsmd.protocol import ListVsms


def test_paused_inside_and_back_on_after() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_back_on_after_an_error() -> None:
    with pytest.raises(KeyError), gc_paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_left_off_when_the_caller_had_it_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_daemon_builds_and_sends_a_list_with_the_collector_paused() -> None:
    seen: list[bool] = []

    def list_dicts(_parent: str | None, _recursive: bool) -> list[dict[str, Any]]:
        seen.append(gc.isenabled())
        return [{"id": "a"}]

    def respond(reply: bytes) -> None:
        seen.append(gc.isenabled())
        assert orjson.loads(reply)["result"] == [{"id": "a"}]

    control = SimpleNamespace(manager=SimpleNamespace(list_dicts=list_dicts))
    Control.list(control, ListVsms(), respond)  # type: ignore[arg-type]
    assert seen == [False, False]
    assert gc.isenabled()
