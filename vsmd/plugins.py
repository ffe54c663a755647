"""Loading what users add to vsmd: objects named in an entry-point group of an installed
package, and modules named in the configuration that expose a registration hook. Agent types
and worker tasks are both found this way; a broken one is a ConfigError at start."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vsmd.errors import ConfigError


def entry_points(group: str, what: str) -> Iterator[tuple[str, Any]]:
    """(name, loaded object) of every entry point in ``group``; ``what`` names them in errors."""
    for ep in importlib.metadata.entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken package: said at start, as a bad module
            raise ConfigError(
                f"cannot load {what} entry point {ep.name!r} ({ep.value}): {exc}"
            ) from None
        yield ep.name, obj


def module_hooks(modules: Iterable[str], hook: str, what: str) -> Iterator[Callable[..., Any]]:
    """The ``hook`` function of each module, imported in order; ``what`` names them in errors."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import {what} module {name!r}: {exc}") from None
        fn = getattr(module, hook, None)
        if not callable(fn):
            raise ConfigError(f"{what} module {name!r} has no {hook}(registry)")
        yield fn
