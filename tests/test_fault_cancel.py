"""Cancel reaches an experiment in every phase at once: one benchmarking, one whose engine is
still starting, one queued in the broker (its worker's main process is frozen with SIGSTOP, so
no message is taken) and one waiting for GPUs. On both databases, with real processes:
the task ends `cancelled`, every experiment and attempt says so, the queued job delivered after
the thaw starts nothing, no engine is left, every GPU is free, and the coordinator and
the worker are still alive."""
from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from tests.helpers import mixed_task, start_stack, wait_for, wait_for_end

pytestmark = pytest.mark.integration


def test_cancel_reaches_experiments_in_every_phase(stack):
    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, Task
    from app.task_service import cancel_task, create_task, update_task
    from workers.runtimes import procs

    start_stack(stack, gpus=4)
    # Modelled start-up: 6.6 s for a small CUDA-graph capture, ~500 s for a huge one.
    configs = [{"cuda-graph-max-bs": 1}, {"cuda-graph-max-bs": 100_000}, {"cuda-graph-max-bs": 1},
               {"cuda-graph-max-bs": 1, "tp-size": 2}]
    data = mixed_task(configs, parallel=2, startup=None)
    data["sim"] = {"time_scale": 1.0}
    data["benchmark"].update(max_requests_per_iteration=100_000, max_time_per_iteration=100)
    data["optimization"]["timeout_per_iteration"] = 900
    task_id = create_task(parse_task(data))

    def by_seq(s) -> dict[int, Experiment]:
        return {e.seq: e for e in s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars()}

    def two_phases():
        with session_scope() as s:
            exps = by_seq(s)
            return (exps.get(1) and exps[1].phase == "benchmarking" and exps.get(2) and exps[2].phase == "deploying"
                    and exps[2].attempts and exps[2].attempts[-1].engine)

    wait_for(two_phases, 120, "one experiment benchmarking and one deploying", stack)
    with session_scope() as s:
        engines = [e.attempts[-1].engine for e in by_seq(s).values() if e.attempts and e.attempts[-1].engine]
    worker = next(proc for name, proc, _ in stack.procs if name == "worker0")
    os.kill(worker.pid, signal.SIGSTOP)  # the main process takes no message; its pool children go on
    try:
        update_task(task_id, max_parallel_experiments=4)  # the third fits, the fourth (2 GPUs) waits

        def queued_and_waiting():
            with session_scope() as s:
                exps = by_seq(s)
                queued = [e for e in exps.values() if e.state == "queued"]
                return len(queued) == 1 and len(exps) == 4

        wait_for(queued_and_waiting, 10, "one experiment queued and one waiting", stack)
        with session_scope() as s:
            states = sorted(e.state for e in by_seq(s).values())
        assert states == ["pending", "queued", "running", "running"], states
        cancel_task(task_id)
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    wait_for_end(stack, task_id, 60, "the task to wind down")
    wait_for(lambda: "nothing to claim" in stack.logs(), 30, "the queued job to be delivered, and refused", stack)
    with session_scope() as s:
        assert s.get(Task, task_id).status == "cancelled"
        exps = by_seq(s)
        assert {seq: e.state for seq, e in exps.items()} == {seq: "cancelled" for seq in range(1, 5)}
        attempts = s.execute(select(Attempt).join(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert sorted(a.state for a in attempts) == ["cancelled"] * 3  # the waiting one never had one
        assert all(a.engine is None for a in attempts if a.experiment.seq == 3)  # none for the queued one
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    for identity in engines:
        assert not procs.group_members(identity["pgid"]), "an engine outlived the cancel"
    assert all(proc.poll() is None for _, proc, _ in stack.procs), stack.logs()
