"""The log formats and the reader of VSM output, without a daemon."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from vsmd.logs import OUTPUT_LOGGER, JsonFormatter, TextFormatter, vsm_fields
from vsmd.supervisor.output import MAX_LINE, OutputReader, Source


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def captured() -> Records:
    return Records()


def source(captured: Records) -> Source:
    logger = logging.getLogger("tests.output")
    logger.handlers[:] = [captured]
    logger.propagate = False
    return Source(fd=-1, vsm_id="abc", path="team.kid", pid=7, logger=logger)


def test_lines_are_split_joined_and_cut(captured: Records) -> None:
    src = source(captured)
    src.feed(b"one\ntw")
    src.feed(b"o\r\nthr")
    assert captured.lines == ["one", "two"]
    src.feed(b"x" * (2 * MAX_LINE))  # no newline yet: kept up to MAX_LINE, the rest counted
    assert len(src.buf) == MAX_LINE
    src.feed(b"\n\xff\n")
    assert (
        captured.lines[2] == "thr" + "x" * (MAX_LINE - 3) + f" ... ({MAX_LINE + 3} more bytes cut)"
    )
    assert captured.lines[3] == "\ufffd"  # not UTF-8: replaced, not lost
    src.feed(b"last words")
    src.flush()  # what the end of file does
    src.flush()  # and nothing twice
    assert captured.lines[4:] == ["last words"]
    assert {(r.vsm_id, r.path, r.pid) for r in captured.records} == {("abc", "team.kid", 7)}  # type: ignore[attr-defined]


def test_the_reader_logs_every_pipe_until_its_end(captured: Records) -> None:
    reader = OutputReader()
    pipes = [os.pipe() for _ in range(3)]
    logger = source(captured).logger
    for i, (r, _w) in enumerate(pipes):
        reader.add(r, f"v{i}", f"p{i}", i, logger)
    for i, (_r, w) in enumerate(pipes):
        os.write(w, f"hello from {i}\nno newline {i}".encode())
        os.close(w)
    assert reader.drain(10.0)
    assert sorted(captured.lines) == sorted(
        [f"hello from {i}" for i in range(3)] + [f"no newline {i}" for i in range(3)]
    )
    by_vsm = {r.getMessage(): r.vsm_id for r in captured.records}  # type: ignore[attr-defined]
    assert by_vsm["hello from 2"] == "v2"


def test_drain_gives_up_on_a_pipe_someone_still_holds(captured: Records) -> None:
    reader = OutputReader()
    r, w = os.pipe()
    reader.add(r, "held", "held", None, source(captured).logger)
    try:
        assert reader.drain(0.2) is False
    finally:
        os.close(w)
    assert reader.drain(10.0)


def record(name: str, msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_text_prefixes_a_vsms_output_with_whose_it_is() -> None:
    fmt = TextFormatter()
    out = fmt.format(record(OUTPUT_LOGGER, "psst", **vsm_fields("abc", "team.kid", 7)))
    assert out.endswith(" WARNING vsmd.vsm.output: vsm abc team.kid: psst")
    event = fmt.format(record("vsmd.daemon.events", "exited: x", **vsm_fields("abc", "x")))
    assert event.endswith(" WARNING vsmd.daemon.events: exited: x")  # says so itself


def test_json_is_one_object_with_the_vsm_fields() -> None:
    fmt = JsonFormatter()
    rec = record(OUTPUT_LOGGER, 'say "hi"\nthere', event="x", **vsm_fields("abc", None, 7))
    line = fmt.format(rec)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj == {
        "time": obj["time"],
        "level": "WARNING",
        "logger": OUTPUT_LOGGER,
        "message": 'say "hi"\nthere',
        "vsm_id": "abc",
        "pid": 7,
        "event": "x",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("vsmd", logging.ERROR, __file__, 1, "bug", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(fmt.format(rec))["traceback"]
