"""vsmd.vsm.loop: a coroutine runs to its end on the loop kind asked for."""

from __future__ import annotations

import asyncio

import pytest

from vsmd.vsm import loop


@pytest.mark.parametrize(("kind", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_runs_on_the_kind_asked_for(kind: str, module: str) -> None:
    async def which() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert loop.run(which(), kind) == module
