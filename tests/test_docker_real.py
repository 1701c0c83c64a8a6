"""The docker runtime against a real Docker daemon, with our simulated engine inside a
locally built image (deploy/docker/sim_image.py; nothing is pulled). Skipped, with the
reason, where no daemon answers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from app.domain.engines import SIMULATOR
from tests.helpers import (ROOT, attempt_of, docker_client_or_skip, mixed_task, start_stack, wait_for,
                           wait_for_lost, wait_for_retry)
from workers.runtimes.base import EngineRequest

docker = pytest.importorskip("docker")
IMAGE = "autotuner-sim:latest"


@pytest.fixture(scope="session")
def daemon():
    client = docker_client_or_skip()
    build = subprocess.run([sys.executable, str(ROOT / "deploy/docker/sim_image.py"), "--tag", IMAGE],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    return client


def sim_request(experiment_id: int = 1) -> EngineRequest:
    return EngineRequest(experiment_id=experiment_id, attempt=1, launcher=SIMULATOR, flavour="sglang",
                         model="llama-3-8b", flags=["--tp-size", "1"], gpu_indices=[0],
                         sim={"time_scale": 0.02, "startup_seconds": 0})


@pytest.mark.process
def test_a_real_container_is_local_only_labelled_allow_listed_and_removed(daemon, db, monkeypatch):
    from workers.runtimes.docker_runtime import DockerRuntime, store_label

    monkeypatch.setenv("AUTOTUNER_AUTH_TOKEN", "tok-admin")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:pw@broker/0")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    runtime = DockerRuntime(hf_cache="/nonexistent-autotuner-test")
    deployment = runtime.start(sim_request())
    try:
        container = daemon.containers.get(deployment.identity["container"])
        assert deployment.identity == {"runtime": "docker", "container": container.id}
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert [(b["HostIp"]) for port in bindings.values() for b in port] == ["127.0.0.1"]
        assert container.labels == {"autotuner.experiment": "1", "autotuner.attempt": "1",
                                    "autotuner.managed": "true", "autotuner.store": store_label(),
                                    "autotuner.simulated": "true"}
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert env["HF_TOKEN"] == "hf_x"
        assert not {"AUTOTUNER_AUTH_TOKEN", "CELERY_BROKER_URL", "DATABASE_URL"} & set(env)
        assert not container.attrs["HostConfig"].get("DeviceRequests")  # the simulator needs no GPU
        runtime.wait_ready(deployment, timeout=60)
        body = json.dumps({"model": "llama-3-8b", "prompt": "hello", "max_tokens": 4}).encode()
        req = urllib.request.Request(deployment.base_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.load(resp)["choices"][0]["text"]
    finally:
        runtime.stop(deployment)
    with pytest.raises(docker.errors.NotFound):
        daemon.containers.get(deployment.identity["container"])


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigkill_of_a_worker_its_container_is_reaped_before_the_gpu_is_reused(daemon, stack):
    """The daemon keeps a container whatever happens to the worker that started it: after
    SIGKILL the GPU stays fenced until the restarted worker has removed the container."""
    from app.store.db import session_scope
    from app.task_service import cancel_task, create_task
    from app.domain.taskspec import parse_task

    # The test waits for the SIGKILLed worker to be declared dead: a shorter margin than
    # stack_env's 15 s keeps that wait short (8 heartbeats of 1 s still pass a slow one).
    stack.env["AUTOTUNER_WORKER_DEAD_AFTER"] = "8"
    start_stack(stack, gpus=1)
    data = mixed_task([{"tp-size": 1}], parallel=1, startup=0)
    data.update(deployment_mode="docker")
    data["sim"]["time_scale"] = 1.0  # modelled time = wall time: the benchmark runs long enough to be killed
    data["benchmark"].update(max_requests_per_iteration=100_000, max_time_per_iteration=100)
    task_id = create_task(parse_task(data))

    def benchmarking():
        with session_scope() as s:
            att = attempt_of(s, task_id, 1)
            return att is not None and att.experiment.phase == "benchmarking" and att.engine

    identity = wait_for(benchmarking, 120, "the containerised engine to be benchmarked", stack)
    container_id = identity["container"]
    (_, worker, _) = next(p for p in stack.procs if p[0] == "worker0")
    try:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

        att, gpu = wait_for_lost(stack, task_id)
        assert gpu.fenced_by == att.id
        assert daemon.containers.get(container_id).status == "running"  # the worker's death did not stop it

        stack.start("worker0-restarted", "worker", "--simulated-gpus", "1")

        gone_at, started_at = wait_for_retry(stack, task_id, 120)
        assert gone_at is not None and gone_at <= started_at
        with pytest.raises(docker.errors.NotFound):
            daemon.containers.get(container_id)
    finally:
        try:
            daemon.containers.get(container_id).remove(force=True)
        except docker.errors.NotFound:
            pass
    cancel_task(task_id)
    wait_for(lambda: _status(task_id) == "cancelled", 60, "the task to be cancelled", stack)


def _status(task_id: int) -> str:
    from app.store.db import session_scope
    from app.store.models import Task

    with session_scope() as s:
        return s.get(Task, task_id).status
