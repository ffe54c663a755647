"""An agent module that refuses to load while the file named by ``VSMD_TEST_BREAK_AGENTS``
exists: a fork server started then cannot start (it loads its agent modules before its hello)."""

from __future__ import annotations

import os
from pathlib import Path

from vsmd.agents import AgentRegistry


def register_agents(registry: AgentRegistry) -> None:
    marker = os.environ.get("VSMD_TEST_BREAK_AGENTS")
    if marker and Path(marker).exists():
        raise RuntimeError(f"agent modules broken on purpose while {marker} exists")
