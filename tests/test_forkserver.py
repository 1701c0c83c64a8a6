"""Simulated engines forked by a pre-imported fork server keep every guarantee of the process
runtime: their own process group led by a supervisor, identity for the reaper, no secret in
any process's environment, exit statuses that classify failures, and death with the worker
(SIGKILL included). Real processes, real signals, /proc read back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from app.domain.taskspec import parse_task
from tests.helpers import ROOT, alive, environ_of, kill_owner, kill_quietly, mixed_task, wait_gone
from workers.experiment_job import engine_request
from workers.runtimes import forkserver, procs
from workers.runtimes.base import EngineError
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.process
SECRETS = {"AUTOTUNER_AUTH_TOKEN": "tok-admin", "DATABASE_URL": "postgresql://tuner:pw@db/tuner",
           "CELERY_BROKER_URL": "redis://:pw@broker:6379/0", "AUTOTUNER_SECRET_KEY": "flask-secret"}


def sim_request(params: dict | None = None, gpus=(2, 3)):
    data = mixed_task([params or {}], startup=0)
    return engine_request(parse_task(data), 1, 1, params or {}, list(gpus))


def children(pid: int) -> list[int]:
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def parent_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def test_a_forked_engine_has_its_own_group_no_secrets_and_stops_with_it(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(forkserver, "_client", None)  # a server started under these secrets
    runtime = ProcessRuntime(name="sim")
    deployment = runtime.start(sim_request())
    identity = deployment.identity
    supervisor = identity["pid"]
    server = forkserver._client.proc.pid
    try:
        runtime.wait_ready(deployment, timeout=60)
        (engine,) = children(supervisor)
        assert parent_of(supervisor) == server and parent_of(server) == os.getpid()
        assert identity["pgid"] == supervisor == os.getpgid(engine)  # the supervisor leads the engine's group
        assert identity["start_ticks"] == procs.start_ticks(supervisor) and procs.is_running(identity)
        for pid in (server, supervisor, engine):
            env = environ_of(pid)
            assert not set(SECRETS) & set(env) and not set(SECRETS.values()) & set(env.values()), pid
        assert "[simulated sglang]" in runtime.logs(deployment)  # the engine writes to its own log
        assert runtime.exit_code(deployment) is None and runtime.is_alive(deployment)
    finally:
        runtime.stop(deployment)
    assert not alive(supervisor) and not alive(engine) and not procs.is_running(identity)
    assert runtime.exit_code(deployment) == 128 + signal.SIGTERM  # as the supervisor reports a stop
    assert alive(server)  # the server stays for the next engine
    runtime.stop(deployment)  # safe twice


@pytest.mark.parametrize("params, kind, code", [({"mem-fraction-static": 0.05}, "kv_cache", 1),
                                                ({"bogus-flag": 1}, "invalid_argument", 2)])
def test_start_up_failures_keep_their_exit_status_and_kind(params, kind, code):
    request = sim_request()
    flags = ["--mem-fraction-static", "0.05"] if "mem-fraction-static" in params else ["--bogus-flag", "1"]
    request = type(request)(**{**request.__dict__, "flags": flags})
    runtime = ProcessRuntime(name="sim")
    deployment = runtime.start(request)
    try:
        with pytest.raises(EngineError) as failure:
            runtime.wait_ready(deployment, timeout=60)
    finally:
        runtime.stop(deployment)
    assert failure.value.kind == kind and runtime.exit_code(deployment) == code


OWNER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from tests.test_forkserver import children, sim_request
from workers.runtimes import forkserver
from workers.runtimes.process import ProcessRuntime
runtime = ProcessRuntime(name="sim")
deployment = runtime.start(sim_request())
runtime.wait_ready(deployment, timeout=60)
supervisor = deployment.identity["pid"]
print(json.dumps({"identity": deployment.identity, "server": forkserver._client.proc.pid,
                  "engine": children(supervisor)[0]}), flush=True)
sys.stdin.read()  # stay until killed
"""


@pytest.mark.parametrize("victim", ["owner", "owner_and_supervisor"])
def test_sigkill_of_the_owner_takes_forked_engines_down(victim):
    """The worker's process is SIGKILLed: the fork server's parent-death signal kills it, and
    each supervisor's kills its engine's group. With the supervisor SIGKILLed too, the engine
    still ends by itself (it watches the worker's pid), and its identity stays stoppable."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    found = json.loads(owner.stdout.readline())
    identity = found["identity"]
    everything = [found["server"], identity["pid"], found["engine"]]
    try:
        assert all(alive(p) for p in everything)
        kill_owner(owner, identity["pid"], victim)
        wait_gone(everything)
        assert not procs.is_running(identity)
    finally:
        kill_quietly(everything)


def test_a_start_without_an_answer_ends_the_server_so_no_late_answer_is_taken_for_the_next(monkeypatch):
    """A start that fails after its request was sent (no answer in time) leaves the server out
    of step: it may still fork that engine and answer late. The server is ended (what it forked
    with it) and the next start gets a fresh server and its own engine's answer."""
    monkeypatch.setattr(forkserver, "_client", None)
    runtime = ProcessRuntime(name="sim")
    first = runtime.start(sim_request())  # a server, warm
    runtime.stop(first)
    old = forkserver._client
    server = old.proc.pid
    with monkeypatch.context() as m:
        m.setattr(forkserver.select, "select", lambda *a: ([], [], []))  # the answer never comes in time
        with pytest.raises(EngineError):
            runtime.start(sim_request())
    assert not old.alive()
    wait_gone([server])
    second = runtime.start(sim_request())
    try:
        assert forkserver._client is not old and parent_of(second.identity["pid"]) == forkserver._client.proc.pid
        runtime.wait_ready(second, timeout=60)
    finally:
        runtime.stop(second)
