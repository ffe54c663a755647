"""Wire protocol shared by the daemon, the VSM runtime and vsmctl.

Admin requests are ``{"v": 1, "cmd": NAME, "args": {...}}``; replies are exactly one of
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code": ..., "message": ...}}``.
Bus messages between VSMs and the daemon use the small :class:`Envelope`.
Only orjson and the standard library are imported here: vsmctl must start fast.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import orjson

from vsmd.errors import BadJson, ProtocolError, TooLarge, UnknownCommand, VsmdError

VERSION = 1


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads_object(body: bytes, limit: int) -> dict[str, Any]:
    """Decode a JSON object, refusing oversized and non-object bodies with a stable code."""
    if len(body) > limit:
        raise TooLarge(f"message of {len(body)} bytes is over the limit of {limit} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(data).__name__}")
    return data


# --- field checking ---------------------------------------------------------------------------

_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "float | None": (int, float, type(None)),
    "float": (int, float),
    "bool": (bool,),
    "dict[str, Any]": (dict,),
}


def _check_field(cmd: str, f: dataclasses.Field[Any], value: Any) -> Any:
    allowed = _KINDS[str(f.type)]
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in allowed:
        allowed = ()
    if not isinstance(value, allowed):
        raise ProtocolError(
            f"{cmd}: field {f.name!r} must be {f.type}, got {type(value).__name__}",
            field=f.name,
        )
    return (
        float(value)
        if isinstance(value, int) and float in allowed and bool not in allowed
        else value
    )


@dataclass(frozen=True)
class Command:
    """Base of admin commands; subclasses are frozen dataclasses of their arguments."""

    cmd: ClassVar[str] = ""

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Self:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(fields))
        if unknown:
            raise ProtocolError(
                f"{cls.cmd}: unknown field(s) {', '.join(unknown)}", field=unknown[0]
            )
        values: dict[str, Any] = {}
        for fname, f in fields.items():
            if fname in args:
                values[fname] = _check_field(cls.cmd, f, args[fname])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.cmd}: missing field {fname!r}", field=fname)
        return cls(**values)

    def to_request(self) -> dict[str, Any]:
        args = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {"v": VERSION, "cmd": self.cmd, "args": args}


@dataclass(frozen=True)
class Ping(Command):
    cmd: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Spawn(Command):
    cmd: ClassVar[str] = "spawn"
    parent: str | None = None
    name: str | None = None
    agent: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListVsms(Command):
    cmd: ClassVar[str] = "list"
    parent: str | None = None
    recursive: bool = True


@dataclass(frozen=True)
class Show(Command):
    cmd: ClassVar[str] = "show"
    id: str


@dataclass(frozen=True)
class Terminate(Command):
    cmd: ClassVar[str] = "terminate"
    id: str
    timeout: float | None = None


COMMANDS: dict[str, type[Command]] = {c.cmd: c for c in (Ping, Spawn, ListVsms, Show, Terminate)}


def parse_request(body: bytes, limit: int) -> Command:
    data = loads_object(body, limit)
    version = data.get("v", VERSION)
    if version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version!r}; this daemon speaks {VERSION}"
        )
    cmd = data.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("request needs a string field 'cmd'", field="cmd")
    cls = COMMANDS.get(cmd)
    if cls is None:
        known = ", ".join(sorted(COMMANDS))
        raise UnknownCommand(f"unknown command {cmd[:64]!r}; known: {known}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("field 'args' must be an object", field="args")
    return cls.from_args(args)


def ok_reply(result: Any) -> bytes:
    return dumps({"ok": True, "result": result})


def error_reply(err: VsmdError) -> bytes:
    return dumps({"ok": False, "error": err.to_dict()})


# --- bus envelope -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """Versioned frame of every message on ``<ns>.recursive``."""

    type: str
    sender: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)
    correlation: str | None = None
    v: int = VERSION

    def encode(self) -> bytes:
        return dumps(dataclasses.asdict(self))

    @classmethod
    def decode(cls, raw: bytes, limit: int) -> Envelope:
        data = loads_object(raw, limit)
        try:
            env = cls(**data)
        except TypeError as exc:
            raise ProtocolError(f"bad envelope: {exc}") from None
        if env.v != VERSION or not isinstance(env.type, str) or not isinstance(env.sender, str):
            raise ProtocolError("bad envelope: wrong version or field types")
        if not isinstance(env.body, dict):
            raise ProtocolError("bad envelope: body must be an object")
        return env


@dataclass(frozen=True)
class SpawnConfig:
    """What to spawn: a name (unique among siblings), an agent type and the agent's settings."""

    name: str | None = None
    agent: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# --- registry view shared with clients ---------------------------------------------------------


@dataclass(frozen=True)
class VsmInfo:
    """What the daemon tells about one VSM."""

    id: str
    name: str
    parent: str | None
    path: str
    depth: int
    pid: int | None
    status: str
    agent: str
    config: dict[str, Any]
    started_at: float | None
    exit_code: int | None
    children: list[str]
    restarts: int = 0
    last_exit: str | None = None
    last_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VsmInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
