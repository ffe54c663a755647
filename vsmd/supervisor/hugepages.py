"""Map the fork server's heap with huge pages before it forks: each fork then copies one
page-table entry per 2 MiB of it instead of 512.

A fork copies the parent's page tables for every private page it has touched, and the fork
server's heap (its imports, the warm-up, the MCP server) is some 55 MiB: in a profile of the
fork server during a burst of spawns, ``copy_page_range`` took half of its CPU time. After the
warm-up the fork server asks the kernel to collapse the 2 MiB-aligned parts of its private
writable mappings into transparent huge pages (``MADV_COLLAPSE``, Linux 6.1). The pages stay
shared copy-on-write: a VSM that writes to one gets its own copy of that 4 KiB page (the kernel
splits the huge mapping in that VSM first), so a VSM's private memory does not grow; the fork
server's own does a little, by the unused parts of the 2 MiB ranges the kernel fills in.

Best effort: a kernel without MADV_COLLAPSE, or without huge pages to give, leaves the heap as it
was and the spawn goes on. Not with ``memory_merge``, whose page merging splits huge pages again.
"""

from __future__ import annotations

import errno

from vsmd.supervisor.oscalls import madvise

MADV_COLLAPSE = 25
HUGE = 2 * 2**20  # the huge page size of x86-64 and arm64 with 4 KiB pages


def private_regions(maps: str) -> list[tuple[int, int]]:
    """The 2 MiB-aligned parts of the private, writable, anonymous mappings (the ``[heap]``
    too) in the text of ``/proc/<pid>/maps``: [start, end) pairs."""
    out: list[tuple[int, int]] = []
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[1] != "rw-p":
            continue
        path = parts[5] if len(parts) > 5 else ""
        if path and path != "[heap]":
            continue  # a file's data, a stack, the vdso: not the allocators' memory
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        start = (lo + HUGE - 1) & ~(HUGE - 1)
        end = hi & ~(HUGE - 1)
        if end - start >= HUGE:
            out.append((start, end))
    return out


def collapse(maps_path: str = "/proc/self/maps") -> int:
    """Collapse what ``private_regions`` finds; the bytes now mapped by huge pages."""
    try:
        with open(maps_path) as f:
            regions = private_regions(f.read())
    except OSError:
        return 0  # no /proc: nothing is collapsed, and the spawn goes on
    done = 0
    for start, end in regions:
        # One huge page at a time: a range the kernel refuses in part is not lost as a whole.
        for at in range(start, end, HUGE):
            err = madvise(at, HUGE, MADV_COLLAPSE)
            if err == 0:
                done += HUGE
            elif err == errno.EINVAL:
                return done  # no MADV_COLLAPSE in this kernel: nothing more will work
    return done
