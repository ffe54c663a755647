"""Pausing the cyclic garbage collector around work that builds thousands of containers.

Used by the daemon (the reply to ``list``) and by the client (decoding it). Each record of a
``list`` makes a few new dicts and lists, none of them garbage; the collections their
allocations set off walk every young object again and again, and a full one the whole heap.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC inside the block (as it was before, afterwards; nests)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
