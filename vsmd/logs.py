"""The daemon's log: text for people, or one JSON object per line for log shippers.

A record about one VSM carries ``vsm_id`` and ``path`` (and, where known, ``pid``) as
attributes, passed with ``extra=vsm_fields(...)``; the JSON format puts them in fields of their
own. Lines a VSM writes to its stdout or stderr come in through ``vsmd.vsm.output``
(vsmd/supervisor/output.py), one record per line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUTPUT_LOGGER = "vsmd.vsm.output"
# Attributes a record may carry beyond logging's own, in the order JSON shows them.
FIELDS = ("vsm_id", "path", "pid", "event")


def vsm_fields(vsm_id: str | None, path: str | None, pid: int | None = None) -> dict[str, Any]:
    """``extra=`` for a record about one VSM; what is not known is left out."""
    fields: dict[str, Any] = {"vsm_id": vsm_id, "path": path, "pid": pid}
    return {k: v for k, v in fields.items() if v is not None}


class TextFormatter(logging.Formatter):
    """The classic line; a VSM's own output is prefixed with whose it is."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.name == OUTPUT_LOGGER:
            who = " ".join(
                str(getattr(record, k)) for k in ("vsm_id", "path") if hasattr(record, k)
            )
            record.message = f"vsm {who}: {record.message}" if who else record.message
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}`` plus ``vsm_id``, ``path``, ``pid``, ``event``
    where the record has them, and ``traceback`` for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd argument in someone's log call must not lose the line.
        return orjson.dumps(out, default=str).decode()


def setup(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Configure the root logger once, at the daemon's start."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
