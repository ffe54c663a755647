"""Wire protocol shared by the daemon, the VSM runtime and vsmctl.

Admin requests are ``{"v": 1, "cmd": NAME, "args": {...}, "idem": KEY}`` (``idem`` optional:
a repeated key gets the first reply again instead of a second execution); replies are exactly
one of ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code": ..., "message": ...}}``.
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
# Nesting a value may bring in: replies, state deltas and the journal carry it a few levels
# further down, and the JSON encoder writes at most 254 levels.
MAX_DEPTH = 200


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


def depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` deep (no recursion).

    The daemon checks every state value it receives: only containers go on the stack, so a
    scalar or a flat list costs a loop over it and no more."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for c in v.values() if isinstance(v, dict) else v:
            if isinstance(c, dict | list):
                stack.append((c, depth + 1))
    return False


# --- field checking ---------------------------------------------------------------------------

_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "float | None": (int, float, type(None)),
    "int | None": (int, type(None)),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict[str, Any]": (dict,),
    "list[str] | None": (list, type(None)),
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
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        # JSON carries such an integer in, but the encoder of every reply refuses it.
        raise ProtocolError(f"{cmd}: field {f.name!r} is out of range", field=f.name)
    if isinstance(value, dict) and depth_over(value, MAX_DEPTH):
        # What could not be written again must not get in: every reply carrying it would fail.
        raise ProtocolError(
            f"{cmd}: field {f.name!r} is nested over {MAX_DEPTH} levels", field=f.name
        )
    if isinstance(value, dict) and not encodable(value):
        raise ProtocolError(f"{cmd}: field {f.name!r} cannot be sent back as JSON", field=f.name)
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


# What a spawn can grant an agent: talk to other VSMs, keep state, spawn in its subtree, HTTP,
# a language model, metrics, MCP tools of its own (vsmd/agents/types.py, docs/api.md).
CAPABILITIES = ("messaging", "state", "spawn", "http", "llm", "metrics", "mcp")

RESTART_POLICIES = ("permanent", "transient", "temporary")
PARENT_EXIT_POLICIES = ("terminate", "abandon")
CHILD_FAILURE_POLICIES = ("ignore", "terminate", "restart")
QUOTA_ACTIONS = ("warn", "restart", "terminate")


@dataclass(frozen=True)
class Policy:
    """How a VSM is supervised and what it may use. None means: the daemon's default."""

    restart: str | None = None
    on_parent_exit: str | None = None
    on_child_failure: str | None = None
    memory_mb: int | None = None
    cpu_percent: float | None = None
    max_fds: int | None = None
    max_procs: int | None = None
    quota_action: str | None = None
    max_children: int | None = None
    budget_descendants: int | None = None
    budget_memory_mb: int | None = None
    # What the VSM's agent may use (vsmd.agents.types.CAPABILITIES); None: its type's.
    capabilities: list[str] | None = None

    def validate(self) -> Policy:
        choices = {
            "restart": RESTART_POLICIES,
            "on_parent_exit": PARENT_EXIT_POLICIES,
            "on_child_failure": CHILD_FAILURE_POLICIES,
            "quota_action": QUOTA_ACTIONS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ProtocolError(
                    f"{name} must be one of {', '.join(allowed)}, not {value!r}", field=name
                )
        for name in ("memory_mb", "max_fds", "max_procs", "max_children", "budget_memory_mb"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ProtocolError(f"{name} must be at least 1, not {value}", field=name)
        if self.budget_descendants is not None and self.budget_descendants < 0:
            raise ProtocolError("budget_descendants must be 0 or more", field="budget_descendants")
        if self.cpu_percent is not None and not 0 < self.cpu_percent <= 100 * 1024:
            raise ProtocolError("cpu_percent must be above 0", field="cpu_percent")
        if self.capabilities is not None:
            unknown = [c for c in self.capabilities if c not in CAPABILITIES]
            if unknown or not all(isinstance(c, str) for c in self.capabilities):
                raise ProtocolError(
                    f"capabilities: unknown {unknown!r}; known: {', '.join(CAPABILITIES)}",
                    field="capabilities",
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose (asdict deep-copies): `list` of 1,000 VSMs calls this 1,000 times.
        return {k: v for k in POLICY_FIELDS if (v := getattr(self, k)) is not None}


POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))


@dataclass(frozen=True)
class Spawn(Command, Policy):
    """A spawn request: who, what, and (flat, as the fields of Policy) how it is supervised."""

    cmd: ClassVar[str] = "spawn"
    parent: str | None = None
    name: str | None = None
    agent: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def spawn_config(self) -> SpawnConfig:
        policy = Policy(**{name: getattr(self, name) for name in POLICY_FIELDS}).validate()
        return SpawnConfig(name=self.name, agent=self.agent, settings=self.config, policy=policy)

    @classmethod
    def of(cls, parent: str | None, cfg: SpawnConfig) -> Spawn:
        return cls(
            parent=parent,
            name=cfg.name,
            agent=cfg.agent,
            config=dict(cfg.settings),
            **cfg.policy.to_dict(),
        )


@dataclass(frozen=True)
class Events(Command):
    cmd: ClassVar[str] = "events"
    since: int = 0
    limit: int = 1000


@dataclass(frozen=True)
class ListVsms(Command):
    cmd: ClassVar[str] = "list"
    parent: str | None = None
    recursive: bool = True


@dataclass(frozen=True)
class ListAgents(Command):
    """Every agent type the daemon knows, with its config schema and capabilities."""

    cmd: ClassVar[str] = "agents"


@dataclass(frozen=True)
class Show(Command):
    cmd: ClassVar[str] = "show"
    id: str


@dataclass(frozen=True)
class Terminate(Command):
    cmd: ClassVar[str] = "terminate"
    id: str
    timeout: float | None = None


@dataclass(frozen=True)
class StateOf(Command):
    """A VSM's state as the daemon's replica holds it, with its effective policy."""

    cmd: ClassVar[str] = "state"
    id: str


@dataclass(frozen=True)
class PolicySet(Command):
    """Set policy keys on a VSM; they flow down to every descendant."""

    cmd: ClassVar[str] = "policy_set"
    id: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyShow(Command):
    cmd: ClassVar[str] = "policy_show"
    id: str


# Policy keys the daemon enforces (and their types); agents' own keys start with "x-".
POLICY_KEYS: dict[str, tuple[type, ...]] = {
    "max_children": (int,),
    "max_depth_below": (int,),
    "memory_mb": (int,),
    "cpu_percent": (int, float),
}


def check_policy_value(key: str, value: Any) -> Any:
    """A policy key and value as ``policy_set`` accepts them, or ProtocolError."""
    if not isinstance(key, str) or not key:
        raise ProtocolError("a policy key must be a non-empty string", field="values")
    if key.startswith("x-") and 2 < len(key) <= 64:
        if value is not None and not isinstance(value, str | int | float | bool | list):
            raise ProtocolError(f"policy {key}: a string, number, boolean or list", field=key)
        if depth_over(value, MAX_DEPTH):
            raise ProtocolError(f"policy {key} is nested over {MAX_DEPTH} levels", field=key)
        if not encodable(value):
            raise ProtocolError(f"policy {key} cannot be sent on as JSON", field=key)
        return value
    kinds = POLICY_KEYS.get(key)
    if kinds is None:
        raise ProtocolError(
            f"{key[:64]!r} is not a policy key: use {', '.join(POLICY_KEYS)}, "
            "or x-<name> for a key of the agents' own",
            field=key,
        )
    if value is None:
        return None  # deletes the key
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ProtocolError(f"policy {key} must be a number of 0 or more", field=key)
    if not isinstance(value, kinds) or not encodable(value):
        raise ProtocolError(f"policy {key} must be a number of 0 or more", field=key)
    return value


def encodable(value: Any) -> bool:
    """Whether JSON can carry ``value`` on (orjson refuses integers past 64 bits, for one)."""
    try:
        dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return False
    return True


COMMANDS: dict[str, type[Command]] = {
    c.cmd: c
    for c in (
        Ping,
        Spawn,
        ListVsms,
        ListAgents,
        Show,
        Terminate,
        Events,
        StateOf,
        PolicySet,
        PolicyShow,
    )
}


IDEM_MAX = 128  # an idempotency key is a client's token (a uuid), not a place for data


def parse_request(body: bytes, limit: int) -> Command:
    return parse_admin(body, limit)[0]


def parse_admin(body: bytes, limit: int) -> tuple[Command, str | None]:
    """The command of an admin request and its idempotency key (``idem``), if it has one."""
    data = loads_object(body, limit)
    idem = data.get("idem")
    if idem is not None and (not isinstance(idem, str) or not 0 < len(idem) <= IDEM_MAX):
        raise ProtocolError(
            f"field 'idem' must be a string of 1 to {IDEM_MAX} characters", field="idem"
        )
    version = data.get("v", VERSION)
    if type(version) is not int or version != VERSION:  # True == 1 in Python
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
    return cls.from_args(args), idem


def ok_reply(result: Any) -> bytes:
    return dumps({"ok": True, "result": result})


def error_reply(err: VsmdError) -> bytes:
    return dumps({"ok": False, "error": err.to_dict()})


# --- bus envelope -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """Versioned frame of every message on ``<ns>.recursive``.

    ``sender`` is the sending VSM's id (or ``vsmd`` / ``vsmctl``), ``path`` its path in the tree.
    """

    type: str
    sender: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)
    correlation: str | None = None
    path: str = ""
    v: int = VERSION

    def encode(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies the body, which costs more than the rest of
        # sending it (an MCP message is a deep body).
        return dumps(
            {
                "type": self.type,
                "sender": self.sender,
                "body": self.body,
                "id": self.id,
                "time": self.time,
                "correlation": self.correlation,
                "path": self.path,
                "v": self.v,
            }
        )

    @classmethod
    def decode(cls, raw: bytes, limit: int) -> Envelope:
        return cls.from_object(loads_object(raw, limit))

    @classmethod
    def from_object(cls, data: dict[str, Any]) -> Envelope:
        """The envelope in a decoded JSON object, checked as ``decode`` checks it."""
        version = data.get("v", VERSION)
        if type(version) is not int or version != VERSION:
            raise ProtocolError(f"bad envelope: unknown version {str(version)[:20]!r}")
        try:
            env = cls(**data)
        except TypeError as exc:
            raise ProtocolError(f"bad envelope: {exc}") from None
        for name, kind in _ENVELOPE_TYPES.items():
            if not isinstance(getattr(env, name), kind) or isinstance(getattr(env, name), bool):
                raise ProtocolError(f"bad envelope: {name!r} has the wrong type")
        if not isinstance(env.body, dict):
            raise ProtocolError("bad envelope: body must be an object")
        return env


_ENVELOPE_TYPES: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "sender": str,
    "id": str,
    "time": (int, float),
    "correlation": (str, type(None)),
    "path": str,
}


@dataclass(frozen=True)
class SpawnConfig:
    """What to spawn: a name (unique among siblings), an agent type and the agent's settings."""

    name: str | None = None
    agent: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)


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
    next_restart: float | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    refused: int = 0  # requests of this VSM refused as outside its authority (secure mode)

    def to_dict(self) -> dict[str, Any]:
        # Shallow: the values are plain JSON already, and asdict's deep copy dominated `list`.
        return {name: getattr(self, name) for name in _INFO_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VsmInfo:
        return cls.adopt(dict(data))

    @classmethod
    def adopt(cls, data: dict[str, Any]) -> VsmInfo:
        """``from_dict`` of a dict that nobody else holds (one just decoded from a reply): it
        becomes the object's attributes as it is. A `list` of thousands decodes one per VSM:
        filtering each into a new dict and copying that into the object was 2.8 of the 4.3 ms
        it took for 2,300 records (a `list` of every VSM then took some 40 ms in all)."""
        if len(data) != len(_INFO_NAMES) or not _INFO_NAMES.issuperset(data):
            known = {k: v for k, v in data.items() if k in _INFO_NAMES}  # a newer daemon's go
            return cls(**known)  # defaults filled in, missing required fields refused
        # The frozen dataclass's __init__ sets each field through object.__setattr__: twice
        # what the rest of decoding costs. Every field is there, so none needs a default.
        info = object.__new__(cls)
        object.__setattr__(info, "__dict__", data)
        return info


_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(VsmInfo))
_INFO_NAMES = frozenset(_INFO_FIELDS)
