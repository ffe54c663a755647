"""The one exception tree of vsmd.

Every error carries a stable string ``code`` that travels in admin replies and maps to
vsmctl exit codes. Library errors (pika, OS) are translated into these at the edge.
"""

from __future__ import annotations

from typing import Any


class VsmdError(Exception):
    """Base of every error vsmd raises on purpose."""

    code: str = "INTERNAL"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class ConfigError(VsmdError):
    code = "CONFIG_INVALID"


class InvalidConfig(VsmdError):
    """An agent's settings that its type's schema refuses; ``details["errors"]`` has one
    ``{"field", "message"}`` per bad field."""

    code = "INVALID_CONFIG"


class BrokerError(VsmdError):
    """The broker could not be reached, refused us, or dropped the connection."""

    code = "BROKER_UNAVAILABLE"


class ProtocolError(VsmdError):
    """A message that is not what the protocol allows."""

    code = "BAD_REQUEST"


class BadJson(ProtocolError):
    code = "BAD_JSON"


class UnknownCommand(ProtocolError):
    code = "UNKNOWN_COMMAND"


class TooLarge(ProtocolError):
    code = "TOO_LARGE"


class NotFound(VsmdError):
    code = "NOT_FOUND"


class Unauthorized(VsmdError):
    code = "UNAUTHORIZED"


class SpawnError(VsmdError):
    code = "SPAWN_FAILED"


class QuotaExceeded(VsmdError):
    """A limit (max_total, max_depth, max_children, budget) does not allow the request."""

    code = "QUOTA_EXCEEDED"


class Throttled(VsmdError):
    """Refused for now; ``retry_after`` seconds later it may be admitted."""

    code = "THROTTLED"

    def __init__(self, message: str, retry_after: float, **details: Any) -> None:
        super().__init__(message, retry_after=round(retry_after, 3), **details)
        self.retry_after = retry_after


class Conflict(VsmdError):
    """The request clashes with the current state (e.g. a sibling of the same name)."""

    code = "CONFLICT"


class ShuttingDown(VsmdError):
    code = "SHUTTING_DOWN"


class JournalUnavailable(VsmdError):
    """The journal cannot be written (disk full, read-only state directory): no new VSMs.

    What runs keeps being supervised; spawns are admitted again once a write succeeds.
    """

    code = "JOURNAL_UNAVAILABLE"


class Timeout(VsmdError):
    code = "TIMEOUT"


class Internal(VsmdError):
    """An unexpected exception while handling one request: that request fails, never the daemon.

    The message says what was being handled; the traceback is in the daemon's log.
    """

    code = "INTERNAL"


class Unreachable(VsmdError):
    """No VSM answers at that address: unknown, down, or it went down before it answered."""

    code = "UNREACHABLE"


class AgentError(VsmdError):
    """The target's agent raised while handling the message; the VSM itself keeps running."""

    code = "AGENT_ERROR"


class NoDaemon(VsmdError):
    """No vsmd answers on the namespace (client side)."""

    code = "NO_DAEMON"


_BY_CODE: dict[str, type[VsmdError]] = {}


def _index(cls: type[VsmdError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(VsmdError)


def from_dict(err: dict[str, Any]) -> VsmdError:
    """Rebuild an error received in a reply (client side)."""
    code = str(err.get("code", "INTERNAL"))
    message = str(err.get("message", "unknown error"))
    raw = err.get("details") or {}
    details = dict(raw) if isinstance(raw, dict) else {}
    cls = _BY_CODE.get(code, VsmdError)
    if cls is Throttled:
        return Throttled(message, float(details.pop("retry_after", 1.0)), **details)
    exc = cls(message, **details)
    exc.code = code  # keep a code this client does not know yet
    return exc
