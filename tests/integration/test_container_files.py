"""The Dockerfile and compose.yaml, checked without a Docker engine (none runs on the test
machines): hadolint, the compose specification's schema, and what vsmd needs from them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.harness import BIN, new_namespace, vsm_env

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_dockerfile_passes_hadolint_and_runs_vsmd_unprivileged() -> None:
    res = _run(str(BIN / "hadolint"), "Dockerfile")
    assert res.returncode == 0, res.stdout + res.stderr
    text = (REPO / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", text)
    assert uid is not None
    assert f"\nUSER {uid[1]}:{uid[1]}\n" in text and uid[1] != "0"
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["vsmctl", "ping"', text)
    assert 'ENTRYPOINT ["vsmd"]' in text
    # vsmd/data links into config/ and systemd/: the build context must keep them.
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not {"config", "systemd", "vsmd"} & set(ignored)


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_file_matches_the_compose_spec_and_wires_vsmd_to_rabbitmq() -> None:
    res = _run(
        str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    services = _compose()["services"]
    rabbit, vsmd = services["rabbitmq"], services["vsmd"]
    assert rabbit["image"].endswith("-management")
    mounts = [v.split(":") for v in rabbit["volumes"]]
    plugins_file = next(REPO / src for src, dst, *_ in mounts if dst.endswith("enabled_plugins"))
    plugins = plugins_file.read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_auth_backend_oauth2" in plugins
    assert rabbit["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert vsmd["build"] == "." and vsmd["depends_on"]["rabbitmq"]["condition"] == (
        "service_healthy"
    )
    env = vsmd["environment"]
    assert "@rabbitmq:5672/" in env["VSM_BROKER_URL"]
    assert env["VSM_BROKER_URL"].startswith(
        f"amqp://{rabbit['environment']['RABBITMQ_DEFAULT_USER']}:"
    )
    # A graceful stop of the tree fits in the grace compose gives before SIGKILL.
    assert int(vsmd["stop_grace_period"].rstrip("s")) >= 55


def test_vsmd_run_broker_docker_without_an_engine_says_so_in_one_line(tmp_path: Path) -> None:
    env = vsm_env(new_namespace(), "amqp://guest:guest@127.0.0.1:1/%2F")
    env.update(DOCKER_HOST="unix:///nonexistent/docker.sock", VSM_TRUST="cooperative")
    res = subprocess.run(
        [str(BIN / "vsmd"), "run", "--broker", "docker", "--state-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 3
    lines = [line for line in res.stderr.splitlines() if line.startswith("vsmd:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith(
        "vsmd: no broker: no Docker engine answers at unix:///nonexistent/docker.sock."
    )
