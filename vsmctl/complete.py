"""Shell completion of VSM ids from the running daemon.

The shell runs vsmctl on every Tab, so a completion must come back at once and print nothing
but candidates: no daemon, a slow broker or any error gives no candidates, never a message or
a wait longer than ``COMPLETION_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import typer

COMPLETION_TIMEOUT = 1.0  # seconds; a Tab that takes longer feels broken


@contextlib.contextmanager
def _silent_logging() -> Iterator[None]:
    # Without handlers, Python's last-resort handler would print pika's connection errors to
    # stderr, into the middle of the user's command line.
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _lookup(broker: str | None, namespace: str | None, timeout: float) -> list[tuple[str, str]]:
    from vsmctl.client import VsmClient

    with VsmClient(broker, namespace, timeout) as client:
        return [(i.id, i.path) for i in client.list_child_vsms(None, True)]


def vsm_candidates(
    broker: str | None,
    namespace: str | None,
    incomplete: str,
    timeout: float = COMPLETION_TIMEOUT,
) -> list[tuple[str, str]]:
    """``(id, path)`` of the VSMs whose id starts with ``incomplete``, in tree order.

    The lookup runs on a daemon thread that is given up after ``timeout``: pika's own timeouts
    cover the usual cases, but a completion must not hang on one they miss (a DNS lookup...).
    """
    found: list[list[tuple[str, str]]] = []

    def run() -> None:
        with contextlib.suppress(Exception):
            found.append(_lookup(broker, namespace, timeout))

    with _silent_logging():
        worker = threading.Thread(target=run, name="vsmctl-complete", daemon=True)
        worker.start()
        worker.join(timeout)
    if not found:
        return []
    # Only ids: typer drops any candidate that does not start with what was typed.
    return [(i, p) for i, p in found[0] if i.startswith(incomplete)]


def complete_vsm_id(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Typer autocompletion for an ID: the daemon's VSMs, described by their paths (which zsh
    and fish show next to the ids).

    It asks the daemon named by the command line's --broker/--namespace, else by the
    environment, as the command itself would.
    """
    params = ctx.params if ctx is not None else {}
    broker, namespace = params.get("broker"), params.get("namespace")
    try:
        return vsm_candidates(
            broker if isinstance(broker, str) else None,
            namespace if isinstance(namespace, str) else None,
            incomplete or "",
        )
    except Exception:  # a completion prints candidates or nothing, never a traceback
        return []
