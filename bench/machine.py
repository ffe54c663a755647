"""What the numbers were measured on."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pika
import psutil


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def broker_version(url: str) -> dict[str, str]:
    """The server's own report from the AMQP handshake (product, version, Erlang)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        props = conn._impl.server_properties
        return {
            "product": _text(props.get("product", "?")),
            "version": _text(props.get("version", "?")),
            "platform": _text(props.get("platform", "?")),
        }
    finally:
        conn.close()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe(broker_url: str) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(vm.total / 2**30, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "rabbitmq": broker_version(broker_url),
        "packages": {d: _version(d) for d in ("vsmd", "pika", "psutil", "supervisor")},
        "open_files_limit": _nofile(),
    }


def _nofile() -> str:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"{soft}/{hard}"
