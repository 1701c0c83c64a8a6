"""Duplicate delivery forced by the broker: while both experiments run their engines, a
consumer configured with a 2 s Redis visibility timeout (a misconfigured extra worker, say)
scans the broker, as kombu does periodically, and puts every running job's message back in
its queue; the worker takes them again. The second deliveries find nothing to claim: one
attempt per experiment, one engine per GPU, the task completes, every GPU is free, every
process is alive."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import mixed_task, start_stack, wait_for, wait_for_end

pytestmark = pytest.mark.integration


def test_a_redelivered_running_job_starts_nothing(stack):
    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, Task
    from app.task_service import create_task

    from kombu import Connection

    start_stack(stack, gpus=3)  # a free pool slot takes the redelivered messages
    task_id = create_task(parse_task(mixed_task([{"tp-size": 1}, {"tp-size": 1}], parallel=2, startup=20)))

    def states() -> list[str]:
        with session_scope() as s:
            return sorted(s.execute(select(Experiment.state).where(Experiment.task_id == task_id)).scalars())

    wait_for(lambda: states() == ["running", "running"], 60, "both experiments to run", stack)
    with Connection(stack.env["CELERY_BROKER_URL"], transport_options={"visibility_timeout": 2}) as conn:
        qos = conn.default_channel.qos

        def redelivered() -> bool:
            qos.restore_visible(num=100, interval=1)  # what kombu's event loop runs every few seconds
            return stack.logs().count("nothing to claim") >= 2

        wait_for(redelivered, 60, "both running jobs to be delivered again", stack, interval=1)
    assert states() == ["running", "running"], "the duplicate must arrive while the first delivery runs"

    wait_for_end(stack, task_id, 120, "the task to end")
    with session_scope() as s:
        assert s.get(Task, task_id).status == "completed"
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert [e.state for e in exps] == ["succeeded", "succeeded"]
        attempts = s.execute(select(Attempt).join(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert sorted((a.experiment_id, a.number, a.state) for a in attempts) == sorted(
            (e.id, 1, "succeeded") for e in exps)
        assert sorted(g for a in attempts for g in a.gpus) == sorted({g for a in attempts for g in a.gpus})
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    assert all(proc.poll() is None for _, proc, _ in stack.procs), stack.logs()
