"""An engine that dies in the middle of its benchmark fails its experiment at once, with the
kind "engine died during benchmark" and no objective (never a `succeeded` from the few
requests that got through), and the task goes on."""
from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from tests.helpers import mixed_task, start_stack, wait_for, wait_for_end

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_engine_killed_mid_benchmark_fails_its_experiment_at_once(stack):
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu
    from app.task_service import create_task
    from app.domain.taskspec import parse_task
    from workers.runtimes import procs

    start_stack(stack, gpus=1)
    data = mixed_task([{"tp-size": 1}, {"tp-size": 1}], parallel=1, startup=0)
    data["sim"]["time_scale"] = 1.0  # modelled time = wall time: the benchmark lasts long enough to be killed
    data["benchmark"].update(max_requests_per_iteration=100_000, max_time_per_iteration=100)
    task_id = create_task(parse_task(data))

    def first(s):
        return s.execute(select(Experiment).where(Experiment.task_id == task_id, Experiment.seq == 1)).scalar_one_or_none()

    def benchmarking():
        with session_scope() as s:
            exp = first(s)
            return exp is not None and exp.phase == "benchmarking" and exp.attempts and exp.attempts[-1].engine

    identity = wait_for(benchmarking, 120, "the first engine to be benchmarked", stack)
    engine = [p for p in procs.group_members(identity["pgid"]) if p != identity["pid"]]
    assert engine, "the simulated engine runs under its supervisor"
    for pid in engine:
        os.kill(pid, signal.SIGKILL)

    def first_ended():
        with session_scope() as s:
            exp = first(s)
            return exp.finished_at is not None and exp

    exp = wait_for(first_ended, 60, "the experiment whose engine died to end", stack)
    assert exp.state == "failed" and exp.failure_kind == "engine_died", (exp.state, exp.error)
    assert exp.objective is None and "engine died during benchmark" in exp.error
    # The level stopped when the engine died, not when its 100 s ran out.
    with session_scope() as s:
        (att,) = first(s).attempts
        assert att.failure_kind == "engine_died" and (att.finished_at - att.started_at).total_seconds() < 90
    from app.task_service import cancel_task

    cancel_task(task_id)

    wait_for_end(stack, task_id, 60, "the task to end")
    with session_scope() as s:
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    assert not procs.is_running(identity)
