"""The fork server's hole filler: what the allocator reports free, then filled."""

from __future__ import annotations

import pytest

from vsmd.supervisor import holes

STATS = """Small block threshold = 512, in 32 size classes.

class   size   num pools   blocks in use  avail blocks
-----   ----   ---------   -------------  ------------
    0     16           2             900          1140
    2     48           1             300            41

# arenas allocated total           =                   10
"""


def test_the_size_class_table_is_read() -> None:
    assert holes.free_blocks(STATS) == {16: 1140, 48: 41}


def test_holes_left_by_freed_objects_are_filled() -> None:
    # 20,000 objects of the 64-byte class, every other one freed: thousands of holes in pools
    # that stay in use, as the garbage of a warm-up leaves them.
    made = [bytes(64 - 33) for _ in range(20_000)]
    del made[::2]
    before = holes.free_blocks()[64]
    assert before >= 10_000 - 1_000
    kept = holes.fill()
    after = holes.free_blocks()
    # What is left free is at most the unfilled tail of the pools the fill itself opened.
    assert after[64] < before // 10
    assert sum(len(batch) for batch in kept) >= before
    assert made  # held until here, so that the holes stay holes


def test_without_the_statistics_nothing_is_filled_and_nothing_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(_stats: str | None = None) -> dict[int, int]:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(holes, "free_blocks", refused)
    assert holes.fill() == []
