"""VsmClient decodes a long list with the cyclic GC paused, and always puts it back as it was."""

from __future__ import annotations

import gc

import pytest

from vsmctl.client import _gc_paused


def test_paused_inside_and_back_on_after() -> None:
    assert gc.isenabled()
    with _gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_back_on_after_an_error() -> None:
    with pytest.raises(KeyError), _gc_paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_left_off_when_the_caller_had_it_off() -> None:
    gc.disable()
    try:
        with _gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
