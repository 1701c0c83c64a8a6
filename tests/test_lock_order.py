"""Transactions that change several GPU rows lock them in one order: a worker's heartbeat
and the scheduler hammering the same GPUs on PostgreSQL never deadlock."""
from __future__ import annotations

import threading

import pytest

from app.store import ledger
from app.store.db import session_scope
from app.store.models import Experiment, Gpu, Task
from app.store.pool import GpuSpec, heartbeat, register_worker

pytestmark = pytest.mark.process
ROUNDS = 150


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_heartbeats_and_scheduling_together_never_deadlock(database_url):
    register_worker("w@h", "g", "h", "gpu.g", 8, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(8)], "inc", 1)
    with session_scope() as s:
        task = Task(name="t", spec={}, engine="sglang", deployment_mode="sim", strategy="list",
                    objective="minimize_latency", max_iterations=1)
        s.add(task)
        s.flush()
        exp = Experiment(task_id=task.id, seq=1, params={})
        s.add(exp)
        s.flush()
        exp_id = exp.id
        # Descending ids: the order a careless UPDATE ... WHERE id IN (...) might take them in.
        gpu_ids = tuple(sorted((g.id for g in s.query(Gpu)), reverse=True))
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            for i in range(ROUNDS):
                assert heartbeat("w@h", "inc", {k: float(i % 100) for k in range(8)})
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def schedule() -> None:
        try:
            for attempt in range(ROUNDS):
                with session_scope() as s:
                    ledger.take(s, exp_id, attempt, gpu_ids)
                with session_scope() as s:
                    ledger.release(s, exp_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=beat), threading.Thread(target=beat), threading.Thread(target=schedule)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_scope() as s:
        assert s.query(Gpu).filter(Gpu.held_by.is_not(None)).count() == 0
