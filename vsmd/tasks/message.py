"""A task as it travels: an envelope of type ``task`` on a worker's queue, and the headers that
count its attempts.

Attempts live in a header because a broker requeue cannot change a message: a failed attempt
publishes the task again with the count raised and acks the delivery it came in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vsmd.errors import ProtocolError
from vsmd.protocol import Envelope

TASK_TYPE = "task"
STATUS_CALL = "worker_status"  # the call a worker answers with its queue's name, once it serves
ATTEMPTS = "x-attempts"  # attempts that ended without a result before this delivery
ERROR = "x-error"  # the last of them's error
TASK = "x-task"  # on a dead letter: the task's name
REASON = "x-reason"  # on a dead letter: "<code>: <message>", as every dead letter of <ns>.dead
VSM = "x-vsm"  # on a dead letter: the worker that gave up
MAX_ERROR = 500  # characters of an error kept in a header
# Dots allowed: modules often name their tasks "images.resize".
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")


def check_name(name: object) -> str:
    """A task name: 1-64 characters of letters, digits, ``_ . : -``; ProtocolError if not."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        raise ProtocolError(
            f"bad task name {shown!r}: 1-64 characters of letters, digits, '_', '.', ':', '-'",
            field="task",
        )
    return name


def check_args(args: object) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise ProtocolError(
            f"task args must be a JSON object, got {type(args).__name__}", field="args"
        )
    return args


@dataclass(frozen=True)
class TaskRequest:
    """One task: its name, its arguments, and who asked (a VSM id, or ``vsmctl``)."""

    task: str
    args: dict[str, Any]
    sender: str
    path: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def encode(self) -> bytes:
        body = {"task": self.task, "args": self.args}
        env = Envelope(type=TASK_TYPE, sender=self.sender, path=self.path, body=body, id=self.id)
        return env.encode()

    @classmethod
    def decode(cls, raw: bytes, limit: int) -> TaskRequest:
        """ProtocolError (or BadJson, TooLarge) for anything but a well-formed task."""
        env = Envelope.decode(raw, limit)
        if env.type != TASK_TYPE:
            raise ProtocolError(f"a task queue takes tasks, not {env.type[:64]!r}")
        unknown = set(env.body) - {"task", "args"}
        if unknown:
            raise ProtocolError(f"task: unknown fields {sorted(unknown)[:5]}")
        task = check_name(env.body.get("task"))
        args = check_args(env.body.get("args", {}))
        return cls(task, args, env.sender, env.path, env.id)


def attempts_of(headers: Mapping[str, Any] | None) -> int:
    """The attempt count a delivery carries; a missing or bad header counts as none."""
    value = (headers or {}).get(ATTEMPTS)
    if type(value) is not int or value < 0:
        return 0
    return value


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
