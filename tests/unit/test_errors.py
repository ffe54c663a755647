"""The error tree and errors.from_dict, which rebuilds errors received in replies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from vsmd import errors
from vsmd.errors import (
    BadJson,
    BrokerError,
    ConfigError,
    Conflict,
    NoDaemon,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    ShuttingDown,
    SpawnError,
    Throttled,
    Timeout,
    TooLarge,
    Unauthorized,
    UnknownCommand,
    VsmdError,
)

# --- errors.from_dict -------------------------------------------------------------------------

SIMPLE_ERRORS: list[type[VsmdError]] = [
    VsmdError,
    ConfigError,
    BrokerError,
    ProtocolError,
    BadJson,
    UnknownCommand,
    TooLarge,
    NotFound,
    Unauthorized,
    SpawnError,
    QuotaExceeded,
    Conflict,
    ShuttingDown,
    Timeout,
    NoDaemon,
]


@pytest.mark.parametrize("cls", SIMPLE_ERRORS, ids=lambda c: c.__name__)
def test_from_dict_rebuilds_the_class(cls: type[VsmdError]) -> None:
    original = cls("it went wrong", id="x1")
    rebuilt = errors.from_dict(orjson.loads(orjson.dumps(original.to_dict())))
    assert type(rebuilt) is cls
    assert rebuilt.code == cls.code
    assert rebuilt.message == "it went wrong"
    assert rebuilt.details == {"id": "x1"}
    assert rebuilt.to_dict() == original.to_dict()


def test_codes_are_distinct() -> None:
    classes: list[type[VsmdError]] = [*SIMPLE_ERRORS, Throttled]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))


def test_from_dict_throttled_keeps_retry_after() -> None:
    wire = orjson.loads(orjson.dumps(Throttled("slow down", 2.5, who="x").to_dict()))
    rebuilt = errors.from_dict(wire)
    assert isinstance(rebuilt, Throttled)
    assert rebuilt.retry_after == 2.5
    assert rebuilt.code == "THROTTLED"
    assert rebuilt.message == "slow down"
    assert rebuilt.details == {"retry_after": 2.5, "who": "x"}


def test_from_dict_throttled_without_retry_after_defaults_to_one_second() -> None:
    rebuilt = errors.from_dict({"code": "THROTTLED", "message": "m"})
    assert isinstance(rebuilt, Throttled)
    assert rebuilt.retry_after == 1.0


def test_from_dict_does_not_change_its_argument() -> None:
    wire: dict[str, Any] = {
        "code": "THROTTLED",
        "message": "m",
        "details": {"retry_after": 2.0, "who": "x"},
    }
    rebuilt = errors.from_dict(wire)
    assert wire["details"] == {"retry_after": 2.0, "who": "x"}
    assert wire == {
        "code": "THROTTLED",
        "message": "m",
        "details": {"retry_after": 2.0, "who": "x"},
    }
    assert isinstance(rebuilt, Throttled)
    assert rebuilt.retry_after == 2.0


def test_from_dict_unknown_code_keeps_its_code() -> None:
    rebuilt = errors.from_dict(
        {"code": "BRAND_NEW", "message": "newer daemon", "details": {"a": 1}}
    )
    assert type(rebuilt) is VsmdError
    assert rebuilt.code == "BRAND_NEW"
    assert rebuilt.message == "newer daemon"
    assert rebuilt.to_dict() == {
        "code": "BRAND_NEW",
        "message": "newer daemon",
        "details": {"a": 1},
    }
    assert VsmdError.code == "INTERNAL"  # only the instance changed


def test_from_dict_of_garbage() -> None:
    rebuilt = errors.from_dict({"details": "not a dict"})
    assert type(rebuilt) is VsmdError
    assert rebuilt.code == "INTERNAL"
    assert rebuilt.message == "unknown error"
    assert rebuilt.details == {}
