"""One HTTP call of the api agent: its settings, the request as a caller asks for it, the
attempts with backoff, and the answer that goes back.

Retries: a connection that was never made is retried for every method (nothing was sent); a
timeout, a broken connection or a 5xx answer only for the idempotent methods (GET, HEAD, PUT,
DELETE, OPTIONS): a POST the server may have acted on is not sent twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

from vsmd.agents.allowlist import ENTRY_PATTERN
from vsmd.agents.http_client import ConnectFailed, Fetched, LazyHttp
from vsmd.errors import AgentError, ProtocolError, Timeout, VsmdError

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "allow": {
            "type": "array",
            "items": {"type": "string", "pattern": ENTRY_PATTERN},
            "minItems": 1,
            "maxItems": 256,
        },
        "methods": {
            "type": "array",
            "items": {"enum": list(METHODS)},
            "minItems": 1,
            "uniqueItems": True,
        },
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "backoff": {"type": "number", "minimum": 0, "maximum": 60},
        "backoff_max": {"type": "number", "minimum": 0, "maximum": 300},
        "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 100000},
        "burst": {"type": "integer", "minimum": 1, "maximum": 100000},
        "failure_threshold": {"type": "integer", "minimum": 1, "maximum": 10000},
        "cooldown": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "max_body": {"type": "integer", "minimum": 0, "maximum": 1 << 20},
        "purpose": {"type": "string", "maxLength": 500},
    },
    "required": ["allow"],
    "additionalProperties": False,
}

CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "minLength": 1, "maxLength": 8192},
        "method": {"enum": list(METHODS)},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"type": "string"},
        "json": {},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["url"],
    "additionalProperties": False,
}
_CALL_VALIDATOR = jsonschema.Draft202012Validator(CALL_SCHEMA)


@dataclass(frozen=True)
class ApiSettings:
    allow: tuple[str, ...]
    methods: frozenset[str]
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.2
    backoff_max: float = 5.0
    rate: float = 5.0
    burst: int = 10
    failure_threshold: int = 5
    cooldown: float = 30.0
    max_body: int = 65536

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ApiSettings:
        """From settings the daemon has checked against CONFIG_SCHEMA."""
        d = cls(allow=(), methods=frozenset())
        return cls(
            allow=tuple(config.get("allow", ())),
            methods=frozenset(config.get("methods", METHODS)),
            timeout=float(config.get("timeout", d.timeout)),
            retries=int(config.get("retries", d.retries)),
            backoff=float(config.get("backoff", d.backoff)),
            backoff_max=float(config.get("backoff_max", d.backoff_max)),
            rate=float(config.get("rate", d.rate)),
            burst=int(config.get("burst", d.burst)),
            failure_threshold=int(config.get("failure_threshold", d.failure_threshold)),
            cooldown=float(config.get("cooldown", d.cooldown)),
            max_body=int(config.get("max_body", d.max_body)),
        )


@dataclass(frozen=True)
class CallRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None
    timeout: float

    @classmethod
    def parse(cls, args: dict[str, Any], settings: ApiSettings) -> CallRequest:
        """ProtocolError, naming every bad field, for arguments CALL_SCHEMA refuses."""
        errors = sorted(_CALL_VALIDATOR.iter_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            text = "; ".join(
                f"{'.'.join(str(p) for p in e.absolute_path) or '(arguments)'}: {e.message}"
                for e in errors[:10]
            )
            raise ProtocolError(f"api call refused: {text}")
        method = str(args.get("method", "GET"))
        if method not in settings.methods:
            raise ProtocolError(
                f"api call refused: method {method} is not allowed here "
                f"({', '.join(sorted(settings.methods))})"
            )
        headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
        content: bytes | None = None
        if "body" in args and "json" in args:
            raise ProtocolError("api call refused: give body or json, not both")
        if "body" in args:
            content = str(args["body"]).encode()
        elif "json" in args:
            content = orjson.dumps(args["json"])
            if not any(k.lower() == "content-type" for k in headers):
                headers["content-type"] = "application/json"
        timeout = min(float(args.get("timeout", settings.timeout)), settings.timeout)
        return cls(method, str(args["url"]), headers, content, timeout)


@dataclass(frozen=True)
class Outcome:
    """The last attempt's answer or error, and how many attempts were made."""

    fetched: Fetched | None
    error: VsmdError | None
    attempts: int

    @property
    def failed(self) -> bool:
        """A failure as the circuit counts it: no answer, or a 5xx one."""
        return self.fetched is None or self.fetched.status >= 500


def retryable(method: str, fetched: Fetched | None, error: VsmdError | None) -> bool:
    if isinstance(error, ConnectFailed):
        return True  # nothing reached the server
    if method not in IDEMPOTENT:
        return False  # it may have been acted on
    return error is not None or (fetched is not None and fetched.status >= 500)


def backoff_delay(attempt: int, settings: ApiSettings, rng: random.Random) -> float:
    """Doubling from ``backoff``, capped at ``backoff_max``, with jitter in its upper half so
    that callers retrying together do not hit the server together again."""
    base = min(settings.backoff_max, settings.backoff * 2.0 ** (attempt - 1))
    return base * (0.5 + rng.random() / 2)


async def perform(
    http: LazyHttp, req: CallRequest, settings: ApiSettings, retries: int, rng: random.Random
) -> Outcome:
    attempts = 0
    while True:
        attempts += 1
        fetched: Fetched | None = None
        error: VsmdError | None = None
        try:
            fetched = await http.fetch(
                req.method,
                req.url,
                timeout=req.timeout,
                max_body=settings.max_body,
                headers=req.headers,
                content=req.content,
            )
        except (Timeout, AgentError) as err:  # ConnectFailed too; a ProtocolError goes up
            error = err
        if attempts > retries or not retryable(req.method, fetched, error):
            return Outcome(fetched, error, attempts)
        await asyncio.sleep(backoff_delay(attempts, settings, rng))


def answer(fetched: Fetched, attempts: int) -> dict[str, Any]:
    """What goes back to the caller: status, headers, the body (text, or base64 when it is no
    UTF-8), ``truncated``, and ``json`` when the server said JSON and all of it came."""
    out: dict[str, Any] = {
        "status": fetched.status,
        "headers": fetched.headers,
        "truncated": fetched.truncated,
        "bytes": len(fetched.body),
        "attempts": attempts,
        "elapsed": round(fetched.elapsed, 3),
    }
    text = _text(fetched.body, fetched.truncated)
    if text is None:
        out["body"], out["encoding"] = base64.b64encode(fetched.body).decode(), "base64"
    else:
        out["body"], out["encoding"] = text, "utf-8"
    ctype = fetched.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if text is not None and not fetched.truncated and ctype.endswith(("/json", "+json")):
        # The body is there as text either way: a server that mislabels just gets no json.
        with contextlib.suppress(orjson.JSONDecodeError):
            out["json"] = orjson.loads(text)
    return out


def _text(body: bytes, truncated: bool) -> str | None:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        # A cut through the last character of a truncated body is no reason for base64.
        if truncated and exc.start >= len(body) - 3:
            try:
                return body[: exc.start].decode()
            except UnicodeDecodeError:
                return None
        return None
