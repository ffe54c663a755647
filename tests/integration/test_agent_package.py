"""The agent type of docs/agents.md, "Writing an agent type as a package": the files the docs
show are the example's files, pip installs the example, and a daemon runs it as the docs say."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import BIN, REPO, running_daemon

EXAMPLE = REPO / "docs" / "examples" / "greeting_agents"
FILES = ("pyproject.toml", "greeting_agents/__init__.py")


def _shown(doc: str) -> dict[str, str]:
    """The transcript's commands and what the docs say each prints."""
    block = doc.split("$ pip install ./greeting_agents", 1)[1].split("```", 1)[0]
    out: dict[str, str] = {}
    command = ""
    for line in block.splitlines()[1:]:
        if line.startswith("$ "):
            command = line[2:]
            out[command] = ""
        elif command:
            out[command] += line + "\n"
    return out


@pytest.mark.slow  # about 10 s or more: make test-slow, and CI
def test_the_docs_show_the_example_and_the_example_runs(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = (REPO / "docs" / "agents.md").read_text()
    for name in FILES:
        assert (EXAMPLE / name).read_text() in doc, f"docs/agents.md does not show {name} as it is"
    site, source = tmp_path / "site", tmp_path / "greeting_agents"
    # A copy: building a package writes build/ and *.egg-info into its source tree.
    shutil.copytree(EXAMPLE, source)
    pip = subprocess.run(
        [str(BIN / "pip"), "install", "-q", "--no-deps", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr
    monkeypatch.setenv("PYTHONPATH", str(site))
    shown = _shown(doc)
    with running_daemon(broker_url, tmp_path / "state") as d:
        agents = d.vsmctl("agents").stdout
        listed = agents[agents.index("greeter:") :].splitlines()[:4]
        assert "\n".join(listed) + "\n" == shown["vsmctl agents | grep -A3 greeter"]
        spawned = d.vsmctl(
            "spawn", "--name", "hi", "--agent", "greeter", "--set", "language=fr", "-q"
        )
        vid = spawned.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{12}", vid), spawned.stderr
        sent = d.vsmctl("send", vid, "hello", "--body", '{"who": "Ada"}', "--wait")
        assert sent.stdout == shown['vsmctl send $id hello --body \'{"who": "Ada"}\' --wait']
        called = d.vsmctl("call", "hi", "greet", "--arg", "who=Grace")
        assert called.stdout == shown["vsmctl call hi greet --arg who=Grace"]
        bad = d.vsmctl("spawn", "--agent", "greeter", "--set", "language=de")
        assert bad.returncode == 1
        assert bad.stderr == shown["vsmctl spawn --agent greeter --set language=de"]
        # The package's task, found by a worker through the vsmd.tasks entry point.
        worker = d.vsmctl("spawn", "--name", "cards", "--agent", "worker", "-q")
        assert re.fullmatch(r"[0-9a-f]{12}", worker.stdout.strip()), worker.stderr
        card = d.vsmctl(
            "submit", worker.stdout.strip(), "greeting.card", "--arg", "who=Ada", "--wait"
        )
        assert card.returncode == 0, card.stderr
        assert card.stdout == shown["vsmctl submit $w greeting.card --arg who=Ada --wait"]
