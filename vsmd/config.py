"""Daemon configuration: one typed object, built once from defaults, TOML, env and flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsmd.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
SPAWN_STRATEGIES = ("forkserver", "exec")
EVENT_LOOPS = ("uvloop", "asyncio")  # vsmd.vsm.loop runs each
CGROUP_MODES = ("auto", "off")
LOG_FORMATS = ("text", "json")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")

# Environment variables and the option each one sets.
ENV_VARS = {
    "VSM_BROKER_URL": "broker_url",
    "VSM_NAMESPACE": "namespace",
    "VSM_STATE_DIR": "state_dir",
    "VSM_SPAWN_STRATEGY": "spawn_strategy",
    "VSM_TRUST": "trust",
}


def check_name(value: str, what: str, max_len: int = 32) -> str:
    """Names become words of AMQP routing keys and queue names, so keep them to a safe alphabet."""
    if not value or len(value) > max_len or not set(value) <= NAME_CHARS:
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-{max_len} characters of a-z, 0-9, '_' and '-'"
        )
    return value


@dataclass(frozen=True)
class Config:
    broker_url: str = DEFAULT_BROKER_URL
    namespace: str = "vsm"
    state_dir: Path = Path("/var/lib/vsmd")
    spawn_strategy: str = "forkserver"
    gc_freeze: bool = True
    # The fork server forks a child ahead of the next spawn (docs/spawning.md, "Standby").
    spawn_standby: bool = True
    # The kernel's KSM may merge VSMs' identical pages (docs/spawning.md, "Memory").
    memory_merge: bool = False
    # The fork server's heap on 2 MiB pages before it forks (docs/spawning.md, "Huge pages").
    huge_pages: bool = False
    # The event loop of every VSM: "uvloop" or "asyncio" (docs/runtime-choice.md).
    event_loop: str = "uvloop"
    # Every VSM an MCP server (docs/mcp.md); false saves the per-VSM server objects.
    mcp_server: bool = True
    # Each VSM holds one AMQP connection; the broker's open-files limit caps the tree.
    max_total: int = 500
    max_depth: int = 8
    max_children: int = 200
    spawn_timeout: float = 30.0
    stop_timeout: float = 5.0
    max_message_bytes: int = 65536
    heartbeat: int = 30
    reconnect_max_backoff: float = 5.0
    # Seconds between probes of every running VSM's inbox (unreachable when it is gone); 0: off.
    probe_interval: float = 5.0
    # Most probes a second over all VSMs: with more than probe_rate * probe_interval running,
    # each is probed every (running VSMs / probe_rate) seconds instead.
    probe_rate: float = 200.0
    log_level: str = "INFO"
    # "text" for people, "json" (one object per line, VSM id and path as fields) for shippers.
    log_format: str = "text"
    embedded_broker_nofile: int = 65536  # capped at the hard limit
    default_agent: str = "noop"
    agent_modules: tuple[str, ...] = field(default_factory=tuple)
    # Supervision (OTP-style): defaults for VSMs that do not say otherwise.
    default_restart: str = "transient"
    default_on_parent_exit: str = "terminate"
    default_on_child_failure: str = "ignore"
    max_restarts: int = 5
    max_seconds: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    stable_uptime: float = 10.0
    # Quotas: psutil sampling, acted on after this many violations in a row.
    sample_interval: float = 1.0
    quota_violations: int = 3
    default_quota_action: str = "warn"
    # Kernel-enforced limits per VSM: "auto" uses cgroups where the host lets us, "off" never.
    cgroups: str = "auto"
    # Admission: token buckets (per second, burst) overall and per parent VSM.
    spawn_rate: float = 1000.0
    spawn_burst: int = 1000
    parent_spawn_rate: float = 50.0
    parent_spawn_burst: int = 100
    min_available_mb: int = 256
    memory_budget_mb: int = 0
    # What a VSM under a memory budget that declares no memory_mb gets (0: refuse it).
    default_memory_mb: int = 128
    event_buffer: int = 1000
    # Prometheus endpoint, "host:port"; empty: none (nothing listens unless asked).
    metrics_listen: str = ""
    # Per-VSM rss and cpu series for this many of the largest VSMs only (bounded cardinality).
    metrics_top_n: int = 10
    # "secure": every VSM its own broker identity, operators need credentials (docs/security.md);
    # "cooperative": every VSM uses the daemon's broker account; only for trusted agent code.
    trust: str = "secure"
    # Lifetime of a VSM's broker token (seconds); VSMs refresh at half of it.
    token_ttl: float = 600.0
    # Secure mode as root: each live VSM runs as a uid of its own from vsm_uid_base up;
    # 0 keeps VSMs under the daemon's uid.
    vsm_uid_base: int = 2_000_000
    # A VSM with more than violation_limit refused requests in a minute: "warn" (event and
    # log only) or "terminate" (it and its subtree).
    on_violation: str = "warn"
    violation_limit: int = 10

    def __post_init__(self) -> None:
        check_name(self.namespace, "namespace")
        if self.spawn_strategy not in SPAWN_STRATEGIES:
            raise ConfigError(
                f"invalid spawn_strategy {self.spawn_strategy!r}: "
                f"use one of {', '.join(SPAWN_STRATEGIES)}"
            )
        for name in (
            "max_total",
            "max_depth",
            "max_children",
            "max_message_bytes",
            "heartbeat",
            "max_restarts",
            "quota_violations",
            "spawn_burst",
            "parent_spawn_burst",
            "event_buffer",
            "violation_limit",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"invalid {name} {getattr(self, name)!r}: must be at least 1")
        for name in (
            "spawn_timeout",
            "stop_timeout",
            "reconnect_max_backoff",
            "max_seconds",
            "backoff_initial",
            "backoff_max",
            "sample_interval",
            "spawn_rate",
            "parent_spawn_rate",
            "probe_rate",
            "stable_uptime",
        ):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ConfigError(f"invalid {name} {getattr(self, name)!r}: must be above 0")
        self._check_choices()
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"invalid log_level {self.log_level!r}")

    def _check_choices(self) -> None:
        from vsmd.protocol import (
            CHILD_FAILURE_POLICIES,
            PARENT_EXIT_POLICIES,
            QUOTA_ACTIONS,
            RESTART_POLICIES,
        )

        _choice(self.default_restart, "default_restart", RESTART_POLICIES)
        _choice(self.default_on_parent_exit, "default_on_parent_exit", PARENT_EXIT_POLICIES)
        _choice(self.default_on_child_failure, "default_on_child_failure", CHILD_FAILURE_POLICIES)
        _choice(self.default_quota_action, "default_quota_action", QUOTA_ACTIONS)
        _choice(self.cgroups, "cgroups", CGROUP_MODES)
        _choice(self.log_format, "log_format", LOG_FORMATS)
        _choice(self.trust, "trust", TRUST_MODES)
        _choice(self.event_loop, "event_loop", EVENT_LOOPS)
        _choice(self.on_violation, "on_violation", ("warn", "terminate"))
        if not self.token_ttl >= 60:
            raise ConfigError(f"invalid token_ttl {self.token_ttl!r}: must be at least 60 s")
        parse_listen(self.metrics_listen)
        for name in (
            "min_available_mb",
            "memory_budget_mb",
            "default_memory_mb",
            "probe_interval",
            "metrics_top_n",
            "vsm_uid_base",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"invalid {name} {getattr(self, name)!r}: must be 0 or more")


TRUST_MODES = ("secure", "cooperative")


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:port`` for IPv6) or empty for no endpoint."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"invalid metrics_listen {value!r}: use host:port, e.g. 127.0.0.1:9464")
    return host, int(port)


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"invalid {name} {value!r}: use one of {', '.join(allowed)}")


def _number(raw: Any, integer: bool) -> float | int:
    # bool is an int in Python, and 1.5 is no count of anything.
    if isinstance(raw, bool) or (integer and isinstance(raw, float) and not raw.is_integer()):
        raise ValueError
    return int(raw) if integer else float(raw)


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return raw.lower() in ("true", "1", "yes")
    raise ValueError


def _strings(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(p for p in raw.split(",") if p)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError
    return tuple(raw)


def _coerce(name: str, raw: Any) -> Any:
    kind = str({f.name: f for f in dataclasses.fields(Config)}[name].type)
    try:
        if kind in ("int", "float"):
            return _number(raw, kind == "int")
        if kind == "bool":
            return _boolean(raw)
        if kind == "Path":
            if not isinstance(raw, str | Path):
                raise ValueError
            return Path(raw)
        if kind == "tuple[str, ...]":
            return _strings(raw)
        if not isinstance(raw, str):
            raise ValueError
        return raw
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value for {name}: {raw!r} is not a {kind}") from None


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("vsmd", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [vsmd] must be a table")
    return section


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < TOML file < environment < explicit overrides (command-line flags)."""
    known = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    env = os.environ if env is None else env
    if path is None and env.get("VSM_CONFIG"):
        path = Path(env["VSM_CONFIG"])
    if path is not None:
        for key, raw in _from_toml(path).items():
            if key not in known:
                raise ConfigError(f"unknown option {key!r} in {path}")
            values[key] = _coerce(key, raw)
    for var, key in ENV_VARS.items():
        if env.get(var):
            values[key] = _coerce(key, env[var])
    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = _coerce(key, raw)
    return Config(**values)
