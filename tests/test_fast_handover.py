"""The fast hand-over: a job that frees GPUs places the next waiting experiment itself, so
work moves on even while the coordinator is not answering (frozen here with SIGSTOP)."""
from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from tests.helpers import mixed_task, start_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_finished_job_starts_the_next_waiting_experiment_without_the_coordinator(stack):
    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Experiment
    from app.task_service import create_task

    start_stack(stack, gpus=2)
    # Two experiments of 2 GPUs on a 2-GPU pool: one runs, the other waits for its GPUs.
    task_id = create_task(parse_task(mixed_task([{"tp-size": 2}, {"tp-size": 2}], parallel=2, startup=1.0)))

    def states():
        with session_scope() as s:
            return [e.state for e in s.execute(select(Experiment).where(Experiment.task_id == task_id)
                                               .order_by(Experiment.seq)).scalars()]

    wait_for(lambda: states() == ["running", "pending"], 60, "one experiment running, one waiting", stack)
    (_, coordinator, _) = next(p for p in stack.procs if p[0] == "coordinator")
    os.killpg(coordinator.pid, signal.SIGSTOP)
    try:
        # Neither a coordinator pass nor a tick can run now: only the worker can place it.
        wait_for(lambda: states() == ["succeeded", "succeeded"], 120, "both experiments to run", stack)
    finally:
        os.killpg(coordinator.pid, signal.SIGCONT)
    with session_scope() as s:
        second = s.execute(select(Experiment).where(Experiment.task_id == task_id, Experiment.seq == 2)).scalar_one()
        first = s.execute(select(Experiment).where(Experiment.task_id == task_id, Experiment.seq == 1)).scalar_one()
        assert second.queued_at >= first.finished_at and second.attempt == 1
