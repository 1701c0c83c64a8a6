"""Real engines through the whole system: a server this project did not write (`xpyd-sim`,
from the package index) tuned as a `process` engine, and a GPU worker killed with SIGKILL
in the middle of a benchmark, whose engine must be gone before its GPU is used again."""
from __future__ import annotations

import json
import os
import signal

import pytest
from sqlalchemy import select

from tests.helpers import (alive, attempt_of, kill_quietly, run_to_end, start_stack, wait_for, wait_for_lost,
                           use_engines_file, wait_for_retry, wait_gone)

pytestmark = pytest.mark.integration

pytest.importorskip("xpyd_sim")


def xpyd_engine(tmp_path, monkeypatch, stack, decode_ms: float) -> None:
    """Register xpyd-sim as an engine in an operator engines file, for this test's stack."""
    path = tmp_path / "engines.json"
    path.write_text(json.dumps({"xpyd": {
        "label": "xPyD simulator (OpenAI-compatible)",
        "command": ["{python}", "-c", "from xpyd_sim.cli import main; main()", "serve", "--host", "{host}",
                    "--port", "{port}", "--model", "{model}", "--scheduling", "--prefill-delay-ms", "5",
                    "--decode-delay-per-token-ms", str(decode_ms)],
        "flags": {"max-num-seqs": {"type": "int"}, "max-num-batched-tokens": {"type": "int"}},
        "reserved": ["config", "require-api-key", "mode", "log-requests"],
    }}))
    use_engines_file(monkeypatch, path)
    stack.env["AUTOTUNER_ENGINES_FILE"] = str(path)


def xpyd_task(parameters: dict, requests: int, max_time: float = 60) -> dict:
    return {
        "task_name": "xpyd", "base_runtime": "xpyd", "deployment_mode": "process",
        "model": {"id_or_path": "xpyd-model"},
        "parameters": parameters,
        "optimization": {"strategy": "grid_search", "objective": "maximize_throughput",
                         "max_parallel_experiments": 1, "timeout_per_iteration": 120},
        "benchmark": {"traffic_scenarios": ["D(32,16)"], "num_concurrency": [8],
                      "max_requests_per_iteration": requests, "max_time_per_iteration": max_time},
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_third_party_server_is_tuned_end_to_end(stack, tmp_path, monkeypatch):
    """xpyd-sim batches at most --max-num-seqs requests: at concurrency 8, 8 beats 1."""
    from app.store.db import session_scope
    from app.store.models import Experiment, Task

    xpyd_engine(tmp_path, monkeypatch, stack, decode_ms=5)
    start_stack(stack, gpus=1)
    task_id = run_to_end(stack, xpyd_task({"max-num-seqs": [1, 8]}, requests=24))
    with session_scope() as s:
        task = s.get(Task, task_id)
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert task.status == "completed", stack.logs()
        assert {e.state for e in exps} == {"succeeded"}, [(e.params, e.error) for e in exps]
        assert all(e.metrics["simulated"] is False and not e.simulated for e in exps)
        best = max(exps, key=lambda e: e.objective)
        assert best.params == {"max-num-seqs": 8}
        levels = best.metrics["scenarios"][0]["levels"]
        assert levels[0]["completed"] == 24 and levels[0]["errors"] == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("victim", ["worker", "worker_and_supervisor"])
def test_sigkill_of_a_worker_never_hands_a_gpu_to_a_live_engine(stack, tmp_path, monkeypatch, victim):
    """The worker (its main process and pool children) dies with SIGKILL mid-benchmark.
    `worker`: the supervisor takes the engine's group down at once. `worker_and_supervisor`:
    the engine survives as an orphan; its GPU stays fenced, and the next worker on the host
    reaps it by its recorded identity before the retry may start there."""
    from app.store.db import session_scope
    from app.store.models import Gpu, Task
    from app.task_service import cancel_task, create_task
    from app.domain.taskspec import parse_task
    from workers.runtimes import procs

    xpyd_engine(tmp_path, monkeypatch, stack, decode_ms=50)
    # The test waits for the SIGKILLed worker to be declared dead: a shorter margin than
    # stack_env's 15 s keeps that wait short (8 heartbeats of 1 s still pass a slow one).
    stack.env["AUTOTUNER_WORKER_DEAD_AFTER"] = "8"
    start_stack(stack, gpus=1)
    task_id = create_task(parse_task(xpyd_task({"max-num-seqs": [4]}, requests=100_000, max_time=110)))

    def benchmarking():
        with session_scope() as s:
            att = attempt_of(s, task_id, 1)
            return att is not None and att.engine and att.experiment.phase == "benchmarking" and att.engine

    identity = wait_for(benchmarking, 120, "the first attempt to benchmark its engine", stack)
    assert identity["runtime"] == "process" and procs.is_running(identity)
    engine_pids = procs.group_members(identity["pgid"])
    assert len(engine_pids) >= 2  # the supervisor and the xpyd-sim server
    (_, worker, _) = next(p for p in stack.procs if p[0] == "worker0")
    try:
        if victim == "worker_and_supervisor":
            os.kill(identity["pid"], signal.SIGKILL)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

        att, gpu = wait_for_lost(stack, task_id)
        fenced_by, held_by = gpu.fenced_by, gpu.held_by
        assert fenced_by == att.id and held_by is None  # not handed on: nobody has seen the engine stop
        if victim == "worker":
            wait_gone(engine_pids)  # the supervisor's parent-death signal, with no reaper involved
        else:
            assert any(alive(p) for p in engine_pids) and procs.is_running(identity)

        stack.start("worker0-restarted", "worker", "--simulated-gpus", "1")

        gone_at, started_at = wait_for_retry(stack, task_id, 90)
        assert gone_at is not None and gone_at <= started_at
        assert not procs.is_running(identity) and not any(alive(p) for p in engine_pids)
    finally:
        kill_quietly(engine_pids)
    cancel_task(task_id)

    def ended():
        with session_scope() as s:
            return s.get(Task, task_id).status == "cancelled"

    wait_for(ended, 60, "the task to be cancelled", stack)
    with session_scope() as s:
        gpu = s.execute(select(Gpu)).scalar_one()
        assert gpu.held_by is None and gpu.fenced_by is None
