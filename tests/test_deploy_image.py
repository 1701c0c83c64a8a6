"""deploy/Dockerfile builds offline and the image runs every role as a non-root user.

Built through the Docker SDK FROM a base imported from this machine's Python 3.11
(deploy/docker/base_image.py: nothing is pulled) with this machine's wheels
(deploy/docker/build_image.py). Skipped, with the reason, where no Docker daemon answers.
Every image the test creates descends from its uniquely tagged base and is removed by id.
"""
from __future__ import annotations

import importlib.util
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.helpers import ROOT, docker_client_or_skip, free_port, wait_for

docker = pytest.importorskip("docker")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", ROOT / "deploy" / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _descendants(client, root_id: str) -> list[str]:
    """Ids of every image built on `root_id` (both stages of the build), leaves first."""
    parents = {img.id: img.attrs.get("Parent") or "" for img in client.images.list(all=True)}

    def depth(image_id: str) -> int | None:
        steps = 0
        while image_id and image_id != root_id:
            image_id, steps = parents.get(image_id, ""), steps + 1
        return steps if image_id == root_id else None

    found = [(d, i) for i in parents if i != root_id and (d := depth(i)) is not None]
    return [i for _, i in sorted(found, reverse=True)]


@pytest.fixture(scope="module")
def image():
    client = docker_client_or_skip()
    suffix = uuid.uuid4().hex[:10]
    base_tag, tag = f"autotuner-test-base:{suffix}", f"autotuner-test:{suffix}"
    base_id = _load("base_image").build_image(base_tag)
    started = time.monotonic()
    try:
        image_id = _load("build_image").build(tag, base=base_tag)
        print(f"built {tag} in {time.monotonic() - started:.0f}s, "
              f"{client.images.get(image_id).attrs['Size'] / 1e6:.0f} MB")
        yield client, image_id
    finally:
        for image_id in _descendants(client, base_id) + [base_id]:
            try:
                client.images.remove(image_id, force=True)
            except docker.errors.NotFound:
                pass


def _run(client, image_id: str, command: list[str], **kwargs) -> str:
    container = client.containers.run(image_id, command, detach=True, **kwargs)
    try:
        status = container.wait(timeout=120)
        output = container.logs().decode()
        assert status["StatusCode"] == 0, output
        return output
    finally:
        container.remove(force=True)


@pytest.mark.process
def test_the_image_runs_the_cli_as_a_non_root_user_without_build_tools(image):
    client, image_id = image
    config = client.images.get(image_id).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "/usr/local/bin/autotuner-healthcheck"]
    assert config["Cmd"][:2] == ["autotuner", "web"]
    assert "Usage: autotuner" in _run(client, image_id, ["autotuner", "--help"])
    probe = ("import importlib.util, os, pwd, shutil; print(os.getuid(), pwd.getpwuid(os.getuid()).pw_name, "
             "[t for t in ('gcc', 'cc', 'make', 'pip') if shutil.which(t)], importlib.util.find_spec('pip'))")
    assert _run(client, image_id, ["python", "-c", probe]).split() == ["10001", "autotuner", "[]", "None"]
    # Each role's entry point imports (a broken dependency shows here, not in production).
    _run(client, image_id, ["python", "-c", "import app.web.server, app.celery_app, workers.gpu_worker, flower"])


@pytest.mark.process
def test_the_image_serves_healthz_and_its_healthcheck_sees_it(image, broker_url):
    client, image_id = image
    port = free_port()
    # The host's network: the test's Redis listens on 127.0.0.1 only.
    container = client.containers.run(
        image_id, ["autotuner", "web", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        detach=True, network_mode="host",
        environment={"CELERY_BROKER_URL": broker_url, "AUTOTUNER_HOST_NAME": "image-test"},
        # The image's own check, polled every second instead of every 30 s.
        healthcheck={"test": ["CMD", "python3", "/usr/local/bin/autotuner-healthcheck"], "interval": 1_000_000_000,
                     "timeout": 10_000_000_000, "retries": 30})
    try:
        def healthz():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError):
                container.reload()
                assert container.status in ("created", "running"), container.logs().decode()[-3000:]
                return None

        status, body = wait_for(healthz, 60, "GET /healthz from the container")
        assert status == 200 and body["status"] == "ok", body
        assert body["database"] == "ok" and body["broker"] == "ok"

        def health_status():
            container.reload()
            health = container.attrs["State"].get("Health", {})
            assert health.get("Status") != "unhealthy", health
            return health.get("Status") == "healthy"

        wait_for(health_status, 60, "docker to report the container healthy")
    finally:
        container.remove(force=True)


@pytest.mark.process
def test_a_worker_in_the_image_answers_its_health_check_and_stops_warmly(image, broker_url):
    client, image_id = image
    group, host = f"img{uuid.uuid4().hex[:6]}", "image-test-host"
    container = client.containers.run(
        image_id, ["autotuner", "worker", "--simulated-gpus", "1", "--group", group],
        detach=True, network_mode="host", environment={"CELERY_BROKER_URL": broker_url, "AUTOTUNER_HOST_NAME": host})
    try:
        def answered():
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()[-3000:]
            code, output = container.exec_run(["python3", "/usr/local/bin/autotuner-healthcheck"])
            return code == 0 and f"gpu-{group}@{host}: ok" in output.decode()

        wait_for(answered, 90, "the worker to answer `autotuner ping` through its health check", interval=2)
        # SIGTERM to PID 1 (the worker itself): Celery's warm shutdown, exit status 0.
        container.stop(timeout=60)
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()[-3000:]
    finally:
        container.remove(force=True)
