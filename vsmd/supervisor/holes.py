"""Fill the free blocks of the allocator's partly used pools before the fork server forks.

CPython's small-object allocator hands out blocks from partly used pools first. In a forked
VSM those pools are inherited pages: every new small object placed in one copies a whole page
for a few dozen bytes. Once the fork server has filled every such hole with objects it keeps,
a VSM's new objects go to fresh pools, packed together: in an A/B of 100 idle VSMs, about
0.1 MiB less USS each.

The allocator tells how many free blocks each size class has only through
``sys._debugmallocstats()``, which writes to the C stderr; we read that text.
"""

from __future__ import annotations

import logging
import os
import re
import sys

log = logging.getLogger("vsmd.forkserver")

# A row of the size-class table: class, size, pools, blocks in use, free blocks.
_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")
_BYTES_HEADER = 33  # a bytes object of length n asks the allocator for 33 + n bytes
ROUNDS = 3  # a fill opens new pools part-way; a second pass fills most of what is left


def allocator_stats() -> str:
    """The text of ``sys._debugmallocstats()``, taken from file descriptor 2 (an in-memory
    file meanwhile: no file system needed)."""
    out = os.memfd_create("vsmd-mallocstats")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        size = os.lseek(out, 0, os.SEEK_CUR)
        return os.pread(out, size, 0).decode(errors="replace")
    finally:
        os.close(out)


def free_blocks(stats: str | None = None) -> dict[int, int]:
    """Block size -> free blocks in partly used pools."""
    sizes: dict[int, int] = {}
    for line in (allocator_stats() if stats is None else stats).splitlines():
        m = _ROW.match(line)
        if m:
            sizes[int(m.group(2))] = int(m.group(5))
    return sizes


def _filler(size: int, i: int) -> object:
    """A new object whose allocation takes one block of ``size`` bytes."""
    if size <= 16:
        return object()
    if size <= 32:
        return 1_000 + i  # a one-digit int: 28 bytes, never a cached small int
    return bytes(size - _BYTES_HEADER)


def fill(rounds: int = ROUNDS) -> list[list[object]]:
    """Fill every hole; the caller keeps what this returns for as long as it forks.

    Best effort: without the statistics (another interpreter, no memfd) nothing is filled.
    """
    kept: list[list[object]] = []
    for _ in range(rounds):
        try:
            holes = {size: n for size, n in free_blocks().items() if n}
        except (AttributeError, OSError) as exc:
            log.warning("allocator holes left unfilled: %s", exc)
            break
        if not holes:
            break
        for size, count in holes.items():
            kept.append([_filler(size, i) for i in range(count)])
    return kept
