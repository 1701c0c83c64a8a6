"""Several hosts for real: two worker processes with different host names (AUTOTUNER_HOST_NAME)
join one Redis and one database; experiments spread over both; one host is cut off mid-task
(its whole worker frozen with SIGSTOP: no heartbeat, no result, as on a partitioned network);
the task completes on the other host and the cut-off host's attempts are retried there."""
from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import func, select

from tests.helpers import mixed_task, wait_for, wait_for_end

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_host_cut_off_mid_task_its_work_finishes_on_the_other(stack):
    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, Task, Worker
    from app.task_service import create_task
    from workers.runtimes import procs

    # A frozen host may hold row locks mid-transaction: PostgreSQL ends such a session after
    # this timeout (60 s by default; short here so the test does not wait a minute).
    stack.env["AUTOTUNER_DB_IDLE_TRANSACTION_TIMEOUT"] = "3"
    stack.start("coordinator", "coordinator", "--concurrency", "2")
    workers = {}
    for host in ("host-a", "host-b"):
        stack.env["AUTOTUNER_HOST_NAME"] = host
        workers[host] = stack.start(f"worker-{host}", "worker", "--simulated-gpus", "2")
    del stack.env["AUTOTUNER_HOST_NAME"]

    def online() -> set[str]:
        with session_scope() as s:
            return set(s.execute(select(Worker.host).where(Worker.online.is_(True))).scalars())

    wait_for(lambda: online() == {"host-a", "host-b"}, 60, "both hosts' workers to register", stack)
    task_id = create_task(parse_task(mixed_task([{"tp-size": 1}] * 12, parallel=4, startup=2.0)))

    def running_on_b():
        with session_scope() as s:
            return s.execute(select(Attempt).join(Experiment).where(
                Experiment.task_id == task_id, Attempt.host == "host-b", Attempt.state == "running",
                Attempt.engine.is_not(None))).scalars().all()

    cut = wait_for(running_on_b, 120, "an experiment to run on host-b", stack)
    engines = [a.engine for a in cut]
    os.killpg(workers["host-b"].pid, signal.SIGSTOP)  # cut off: it neither heartbeats nor reports
    try:
        wait_for_end(stack, task_id, 240, "the task to finish on host-a")
        with session_scope() as s:
            task = s.get(Task, task_id)
            assert task.status == "completed", task.error
            exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
            assert len(exps) == 12 and {e.state for e in exps} == {"succeeded"}
            hosts_used = set(s.execute(select(Attempt.host).join(Experiment).where(
                Experiment.task_id == task_id)).scalars())
            assert hosts_used == {"host-a", "host-b"}  # the work was spread over both
            lost = s.execute(select(Attempt).join(Experiment).where(
                Experiment.task_id == task_id, Attempt.host == "host-b", Attempt.state == "lost")).scalars().all()
            assert {a.id for a in lost} >= {a.id for a in cut}
            for att in lost:  # each retried, and finished, on the other host
                retry = s.execute(select(Attempt).where(Attempt.experiment_id == att.experiment_id,
                                                        Attempt.number > att.number)).scalars().all()
                assert [r.host for r in retry if r.state == "succeeded"] == ["host-a"]
            # host-b is offline, its GPUs are not offered; nothing is held anywhere.
            assert s.execute(select(func.count()).select_from(Gpu).where(
                Gpu.host == "host-b", Gpu.online.is_(True))).scalar_one() == 0
            assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    finally:
        os.killpg(workers["host-b"].pid, signal.SIGKILL)  # the partition "ends" as a dead host
        workers["host-b"].wait()
        for identity in engines:  # the frozen host's engines die with their supervisors' parent
            wait_for(lambda identity=identity: not procs.is_running(identity), 30, "host-b's engines to stop")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_autotuner_ping_is_a_liveness_probe_for_a_worker(stack):
    import subprocess
    import sys

    from tests.helpers import ROOT, start_stack

    start_stack(stack, gpus=1)
    from app.store.db import session_scope
    from app.store.models import Worker

    with session_scope() as s:
        (name,) = [w.name for w in s.query(Worker).all()]

    def ping(*args):
        return subprocess.run([sys.executable, "-m", "app.cli", "ping", *args], env=stack.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    # Registered in the store before its Celery consumer is up: wait for the first answer.
    ok = wait_for(lambda: (r := ping(name, "--timeout", "2")).returncode == 0 and r, 60, "the worker to answer")
    assert ok.stdout == f"{name}: ok\n"
    missing = ping("gpu-nobody@nowhere", "--timeout", "1")
    assert missing.returncode == 1 and "gpu-nobody@nowhere did not answer within 1s" in missing.stderr
