"""docs/patterns.md runs: its agent modules in a daemon, each of its examples as a script."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import REPO, DaemonProc, running_daemon

DOC = REPO / "docs" / "patterns.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```\n", re.DOTALL | re.MULTILINE)


def blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def modules() -> dict[str, str]:
    """``# file: NAME.py`` blocks: module name -> source."""
    out = {}
    for code in blocks():
        if m := re.match(r"# file: (\w+)\.py\n", code):
            out[m.group(1)] = code
    return out


def examples() -> dict[str, str]:
    """``# example: TITLE`` blocks: title -> source."""
    out = {}
    for code in blocks():
        if m := re.match(r"# example: (.+)\n", code):
            out[m.group(1)] = code
    return out


def outputs() -> dict[str, str]:
    """Example title -> the output the page shows right after it, where it shows one."""
    text = DOC.read_text()
    fences = list(FENCE.finditer(text))
    out = {}
    for block, after in itertools.pairwise(fences):
        title = re.match(r"# example: (.+)\n", block.group("code"))
        between = text[block.end() : after.start()]
        if title and after.group("lang") == "text" and between == "\nOutput:\n\n":
            out[title.group(1)] = after.group("code")
    return out


def test_every_block_is_a_module_or_an_example() -> None:
    assert len(blocks()) == len(modules()) + len(examples())
    assert set(examples()) == {
        "supervisor tree",
        "fan-out workers",
        "budgets per team",
        "delegation tree",
    }
    assert set(outputs()) == {"fan-out workers", "budgets per team", "delegation tree"}


@pytest.fixture(scope="module")
def patterns_daemon(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProc]:
    code_dir = tmp_path_factory.mktemp("patterns")
    for name, source in modules().items():
        (code_dir / f"{name}.py").write_text(source)
    with pytest.MonkeyPatch.context() as mp:
        # The daemon and its fork server import the page's agent modules from there.
        mp.setenv("PYTHONPATH", str(code_dir))
        config = {"agent_modules": sorted(modules())}
        with running_daemon(broker_url, tmp_path_factory.mktemp("state"), config=config) as d:
            yield d


@pytest.mark.parametrize("title", sorted(examples()))
def test_example_runs(patterns_daemon: DaemonProc, title: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(examples()[title])
    res = subprocess.run(
        [sys.executable, str(script)],
        env=patterns_daemon.env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert res.returncode == 0, f"{title}:\n{res.stdout}\n{res.stderr}"
    if title in outputs():
        assert res.stdout == outputs()[title]
    # Every example ends its trees: the next one starts from an empty daemon.
    with patterns_daemon.client() as c:
        assert c.list_child_vsms() == []
