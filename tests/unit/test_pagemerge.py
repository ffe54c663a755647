"""The daemon's start line about memory_merge, for each state the kernel can be in."""

from __future__ import annotations

import logging

import pytest

from vsmd.config import Config
from vsmd.daemon import pagemerge


@pytest.mark.parametrize(
    ("running", "level", "words"),
    [
        (True, logging.INFO, "KSM merges identical pages"),
        (False, logging.WARNING, "echo 1 > /sys/kernel/mm/ksm/run"),
        (None, logging.WARNING, "this kernel has no KSM"),
    ],
)
def test_says_what_the_kernel_will_do(
    running: bool | None,
    level: int,
    words: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pagemerge, "ksm_running", lambda: running)
    with caplog.at_level(logging.INFO, logger="vsmd"):
        pagemerge.report(Config(memory_merge=True), secure=False)
    assert [(r.levelno, words in r.getMessage()) for r in caplog.records] == [(level, True)]


def test_silent_when_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vsmd"):
        pagemerge.report(Config(), secure=True)
    assert caplog.records == []


def test_exec_strategy_ignores_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vsmd"):
        pagemerge.report(Config(memory_merge=True, spawn_strategy="exec"), secure=False)
    assert "fork server only" in caplog.text


def test_secure_mode_names_the_side_channel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pagemerge, "ksm_running", lambda: True)
    with caplog.at_level(logging.INFO, logger="vsmd"):
        pagemerge.report(Config(memory_merge=True), secure=True)
    assert "time whether another process holds a page" in caplog.text
