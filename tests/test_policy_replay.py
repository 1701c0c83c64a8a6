"""benchmarks/policy_replay.py replays what the coordinator does: the same workload driven
through the real coordinator on a store, with a virtual clock and no overhead, ends at the
same moment as the replay of its policy."""
from __future__ import annotations

import random
from datetime import timedelta

import pytest

pytestmark = pytest.mark.unit


def test_the_replay_of_the_coordinators_policy_is_the_coordinator(db, monkeypatch):
    """Seed 1 of the heterogeneous workload (scheduling.py's): each experiment claimed the
    moment it is placed and ended when its length has passed, then, as a finishing job does,
    the end with its placement, the task's moving average, the coordinator's pass."""
    import app.coordinator as coordinator
    from app.store import ledger, lifecycle, models, pool
    from app.store.db import session_scope
    from app.store.models import Experiment
    from app.store.pool import GpuSpec, register_worker
    from benchmarks.policy_replay import GPUS, PARALLEL, POLICIES, Replay
    from benchmarks.scheduling import heterogeneous_experiments, task
    from tests.helpers import OK, submit

    start = models.utcnow()
    now = [start]
    for module in (models, coordinator, lifecycle, ledger, pool):
        monkeypatch.setattr(module, "utcnow", lambda: now[0])
    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "3600")
    register_worker("gpu-g@h", "g", "h", "gpu.g", GPUS, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(GPUS)],
                    "inc1", 1)
    workload = heterogeneous_experiments(random.Random(1))
    spec = task("replayed", workload, PARALLEL)
    task_id = submit(spec)
    running = {}

    def claim(dispatches) -> None:
        for d in dispatches:
            assert lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1) is not None
            with session_scope() as s:
                seq = s.get(Experiment, d.experiment_id).seq
            running[d.experiment_id] = (now[0] + timedelta(seconds=workload[seq - 1][1]), d)

    claim(coordinator.coordinate(task_id))
    while running:
        first = min(running, key=lambda i: (running[i][0], i))
        now[0], d = running.pop(first)
        ended, placed = coordinator.end_and_place(d.experiment_id, d.attempt, "succeeded", **OK)
        claim(placed)
        lifecycle.learn_length(ended)
        claim(coordinator.coordinate(task_id))

    lengths, needs = [s for _, s in workload], [g for g, _ in workload]
    replayed = Replay(lengths, spec["optimization"]["configs"], needs, POLICIES["coordinator"]).run()
    assert (now[0] - start).total_seconds() == pytest.approx(replayed, abs=1e-3)
