"""deploy/compose.yaml as Docker Compose reads it (`docker compose config`; the older
`docker-compose` where the plugin is absent). Skipped, with the reason, where neither runs."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.process

DEPLOY = ROOT / "deploy"


def _compose_command() -> list[str]:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True).returncode == 0:
            return command
    pytest.skip("neither the Docker Compose plugin (`docker compose`) nor docker-compose is installed")


def _config(env_file, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AUTOTUNER_ENV_FILE=str(env_file))
    env.pop("FLOWER_BASIC_AUTH", None)
    return subprocess.run([*_compose_command(), "--env-file", str(env_file), "-f", str(DEPLOY / "compose.yaml"),
                           *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_compose_accepts_the_file_with_every_profile():
    example = DEPLOY / "compose.env.example"
    checked = _config(example, "--profile", "gpu", "--profile", "sim", "config", "-q")
    assert checked.returncode == 0, checked.stderr
    services = _config(example, "--profile", "gpu", "--profile", "sim", "config", "--services").stdout.split()
    assert {"redis", "postgres", "web", "coordinator", "flower", "worker-sim"} <= set(services)
    assert len([s for s in services if s.startswith("worker-gpu")]) >= 2


def test_compose_refuses_to_start_flower_without_basic_auth(tmp_path):
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(line + "\n" for line in (DEPLOY / "compose.env.example").read_text().splitlines()
                                if not line.startswith("FLOWER_BASIC_AUTH=")))
    refused = _config(env_file, "config", "-q")
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr
