"""The fork server's heap on huge pages: which mappings, and that the kernel maps them."""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import pytest

from tests.support.kernel import collapse_supported
from vsmd.supervisor import hugepages
from vsmd.supervisor.hugepages import HUGE, private_regions

MAPS = """\
00400000-00420000 r--p 00000000 fe:00 260811  /usr/bin/python3.11
00946000-00a85000 rw-p 00545000 fe:00 260811  /usr/bin/python3.11
2d3aa000-2e4ff000 rw-p 00000000 00:00 0       [heap]
7f5369d15000-7f536ac00000 rw-p 00000000 00:00 0
7f536ac00000-7f536ac10000 rw-p 00000000 00:00 0
7f536b000000-7f536b400000 r--p 00000000 00:00 0
7ffd1a000000-7ffd1a600000 rw-p 00000000 00:00 0       [stack]
"""


def test_only_the_aligned_parts_of_private_anonymous_writable_mappings() -> None:
    assert private_regions(MAPS) == [
        (0x2D400000, 0x2E400000),  # the heap, rounded in to 2 MiB boundaries
        (0x7F5369E00000, 0x7F536AC00000),
    ]  # not a file's data, not the stack, nothing under 2 MiB, nothing read-only


def test_no_maps_file_collapses_nothing(tmp_path: Path) -> None:
    assert hugepages.collapse(str(tmp_path / "missing")) == 0


def _huge_kib(lo: int, hi: int) -> int:
    """AnonHugePages of the mappings inside [lo, hi) of this process."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = lo <= int(m.group(1), 16) and int(m.group(2), 16) <= hi
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not collapse_supported(), reason="needs MADV_COLLAPSE (Linux 6.1) and THP")
def test_a_touched_anonymous_mapping_ends_up_on_huge_pages() -> None:
    size = 4 * HUGE
    # Private and anonymous as the allocators' memory is; room for 4 aligned huge pages.
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    with mmap.mmap(-1, size + HUGE, flags=flags) as area:
        area.write(b"x" * len(area))  # every page present, as in the fork server's heap
        lo, hi = (int(x, 16) for x in _mapping_of(area).split()[0].split("-"))
        before = _huge_kib(lo, hi)
        assert hugepages.collapse() >= size
        assert _huge_kib(lo, hi) >= before + size // 1024
        assert area[:1] == b"x" and area[-1:] == b"x"  # the same bytes, on other pages


def _mapping_of(area: mmap.mmap) -> str:
    """The maps line of ``area`` (found by its size and its first bytes' address)."""
    import ctypes

    addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return line
    raise AssertionError("the mapping is not in /proc/self/maps")
