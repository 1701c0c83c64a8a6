"""A `process` engine never outlives the job that started it and never sees the tuner's
secrets: real processes, real signals, /proc read back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import ROOT, alive, environ_of, family_request, kill_owner, kill_quietly, read_pids, wait_gone
from workers.runtimes import procs
from workers.runtimes.process import ProcessRuntime

SECRETS = {"AUTOTUNER_AUTH_TOKEN": "tok-admin", "AUTOTUNER_VIEWER_TOKEN": "tok-viewer",
           "DATABASE_URL": "postgresql://tuner:pw@db/tuner", "CELERY_BROKER_URL": "redis://:pw@broker:6379/0",
           "AUTOTUNER_SECRET_KEY": "flask-secret", "PGPASSWORD": "pw"}


@pytest.mark.process
def test_engine_environment_is_an_allow_list(tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.setenv("MY_ENGINE_MODE", "fast")
    monkeypatch.setenv("UNLISTED", "x")
    # The operator may add names, never the tuner's own (even when listed).
    monkeypatch.setenv("AUTOTUNER_ENGINE_ENV", "MY_ENGINE_*,DATABASE_URL,AUTOTUNER_AUTH_TOKEN")
    runtime = ProcessRuntime()
    deployment = runtime.start(family_request(tmp_path / "pids.json"))
    pids = read_pids(tmp_path / "pids.json")
    try:
        env = environ_of(pids["engine"])
        assert not set(SECRETS) & set(env), sorted(env)
        assert not any(v in SECRETS.values() for v in env.values())
        assert "UNLISTED" not in env and "AUTOTUNER_ENGINE_ENV" not in env
        assert env["HF_TOKEN"] == "hf_x" and env["NCCL_DEBUG"] == "INFO" and env["MY_ENGINE_MODE"] == "fast"
        assert env["CUDA_VISIBLE_DEVICES"] == "2,3"  # exactly the experiment's GPUs
        assert env["PATH"] == os.environ["PATH"]
        # The supervisor between worker and engine sees no more than the engine.
        assert not set(SECRETS) & set(environ_of(deployment.identity["pid"]))
    finally:
        runtime.stop(deployment)
    wait_gone(pids.values(), timeout=5)


@pytest.mark.process
def test_stop_takes_down_the_whole_tree_including_escaped_helpers(tmp_path):
    runtime = ProcessRuntime()
    deployment = runtime.start(family_request(tmp_path / "pids.json"))
    pids = read_pids(tmp_path / "pids.json")
    identity = deployment.identity
    assert identity["pgid"] == identity["pid"] and identity["start_ticks"] == procs.start_ticks(identity["pid"])
    assert procs.is_running(identity)
    assert all(alive(p) for p in pids.values())
    runtime.stop(deployment)
    assert not any(alive(p) for p in pids.values())  # stop() returns only once all are gone
    assert not procs.is_running(identity)
    runtime.stop(deployment)  # safe twice


OWNER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.helpers import family_request as request_for
from workers.runtimes.process import ProcessRuntime
deployment = ProcessRuntime().start(request_for(Path(sys.argv[1])))
print(json.dumps(deployment.identity), flush=True)
sys.stdin.read()  # stay until killed
"""


@pytest.mark.process
@pytest.mark.parametrize("victim", ["owner", "owner_and_supervisor"])
def test_sigkill_of_the_owner_takes_the_engine_down(tmp_path, victim):
    """The job's process is SIGKILLed (an OOM kill, a hard time limit): the supervisor's
    parent-death signal ends the engine's whole tree. If the supervisor is killed too,
    the engine survives; the recorded identity is what lets the reaper end it."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "pids.json"), str(ROOT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    identity = json.loads(owner.stdout.readline())
    pids = read_pids(tmp_path / "pids.json")
    everything = [identity["pid"], *pids.values()]
    try:
        assert all(alive(p) for p in everything)
        kill_owner(owner, identity["pid"], victim)
        if victim == "owner":
            wait_gone(everything)
            assert not procs.is_running(identity)
            return
        wait_gone([identity["pid"]])
        assert alive(pids["engine"]) and procs.is_running(identity)  # orphaned, still holding its GPUs
        assert procs.stop_group(identity, grace=5)
        wait_gone([pids["engine"], pids["helper"]])
        assert not procs.is_running(identity)
    finally:
        kill_quietly(everything)


@pytest.mark.unit
def test_a_recycled_pid_is_not_mistaken_for_the_engine():
    """The reaper never signals a process that only shares the recorded number."""
    me = os.getpid()
    identity = {"pid": me, "pgid": me, "start_ticks": procs.start_ticks(me) + 1, "boot_id": procs.boot_id()}
    assert not procs.is_running(identity)
    assert procs.stop_group(identity, grace=0)  # "gone", and nothing was signalled: we are still here
    other_boot = {**procs.process_identity(me), "boot_id": "another-boot"}
    assert not procs.is_running(other_boot)


@pytest.mark.process
def test_a_wedged_engine_fails_the_health_check_between_levels(tmp_path):
    """Alive but not answering (frozen here with SIGSTOP): the check between load levels says
    so, and the job's watch turns it into `engine_died`."""
    from app.domain.engines import SIMULATOR
    from workers.experiment_job import EngineWatch
    from workers.runtimes.base import EngineError, EngineRequest

    runtime = ProcessRuntime(name="sim")
    request = EngineRequest(experiment_id=1, attempt=1, launcher=SIMULATOR, flavour="sglang", model="llama-3-8b",
                            flags=[], gpu_indices=[0], sim={"startup_seconds": 0})
    deployment = runtime.start(request)
    engine: list[int] = []
    try:
        runtime.wait_ready(deployment, timeout=60)
        assert runtime.healthy(deployment)
        engine = [p for p in procs.group_members(deployment.identity["pgid"]) if p != deployment.identity["pid"]]
        assert engine
        for pid in engine:
            os.kill(pid, signal.SIGSTOP)
        assert not runtime.healthy(deployment, timeout=1)
        watch = EngineWatch(lambda: False, runtime, deployment)
        with pytest.raises(EngineError) as exc:
            watch.between_levels({})
        assert exc.value.kind == "engine_died" and "health check between load levels" in str(exc.value)
    finally:
        for pid in engine:
            os.kill(pid, signal.SIGCONT)
        runtime.stop(deployment)
