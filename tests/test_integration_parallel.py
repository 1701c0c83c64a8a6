"""End to end with real parts: Redis broker, Celery worker processes (coordinator + a
simulated 4-GPU worker), the sim engine over real HTTP, on SQLite and on PostgreSQL."""
from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy import select

from tests.helpers import mixed_task, run_to_end, start_stack, wait_for


MIXED_TP = [1, 2, 4, 1, 1, 2, 4, 1, 2, 1, 1, 2]


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.integration
def test_mixed_gpu_needs_complete_without_sharing_a_gpu(stack):
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, GpuAllocation, Task

    start_stack(stack)
    task_id = run_to_end(stack, mixed_task([{"tp-size": tp} for tp in MIXED_TP]))

    with session_scope() as s:
        task = s.get(Task, task_id)
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert task.status == "completed", stack.logs()
        assert len(exps) == 12
        assert {e.state for e in exps} == {"succeeded"}, [(e.seq, e.state, e.error) for e in exps]
        assert [e.gpus_needed for e in sorted(exps, key=lambda e: e.seq)] == MIXED_TP
        for e in exps:
            assert len(e.gpus) == e.gpus_needed
            assert e.metrics["simulated"] is True

        # Ledger history: per GPU, allocation intervals never overlap and all were released.
        allocs = s.execute(select(GpuAllocation)).scalars().all()
        assert len(allocs) == sum(MIXED_TP)
        assert all(a.released_at is not None for a in allocs)
        for gpu_id, group in itertools.groupby(sorted(allocs, key=lambda a: (a.gpu_id, a.allocated_at)), key=lambda a: a.gpu_id):
            spans = [(a.allocated_at, a.released_at) for a in group]
            for a, b in itertools.combinations(spans, 2):
                assert not overlaps(a, b), f"GPU {gpu_id} held twice at once: {a} {b}"
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None

        # Running intervals as the workers recorded them: two experiments that shared a
        # GPU never ran at the same time, and never more than max_parallel ran at once.
        runs = []
        for e in exps:
            (att,) = s.execute(select(Attempt).where(Attempt.experiment_id == e.id)).scalars().all()
            runs.append((set(att.gpus), (att.started_at, att.finished_at)))
        for (g1, span1), (g2, span2) in itertools.combinations(runs, 2):
            if g1 & g2:
                assert not overlaps(span1, span2), f"{g1 & g2} used by two running experiments"
        for _, (start, _end) in runs:
            concurrent = sum(1 for _, (s2, e2) in runs if s2 <= start < e2)
            assert concurrent <= 4


@pytest.mark.integration
def test_duplicate_delivery_runs_an_experiment_once(stack):
    """After a task ends, every experiment's job is delivered twice more: each experiment
    keeps exactly one attempt and its result, and the duplicates' claims find nothing."""
    from app.store.db import session_scope
    from app.celery_app import send_experiments
    from app.dispatch import Dispatch
    from app.store.models import Attempt, Experiment

    start_stack(stack)
    task_id = run_to_end(stack, mixed_task([{"tp-size": 1}, {"tp-size": 2}, {"tp-size": 1}], parallel=3))
    with session_scope() as s:
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        finished = {e.id: (e.finished_at, e.objective) for e in exps}
        resend = [Dispatch(e.id, e.attempt, f"gpu.{e.group}", 60, 90) for e in exps]
    send_experiments(resend)
    send_experiments(resend)

    def drained():
        import redis

        r = redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])
        return all(r.llen(d.queue) == 0 for d in resend) and "nothing to claim" in stack.logs()

    wait_for(drained, 60, "duplicate jobs to be consumed", stack)
    with session_scope() as s:
        for e in s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars():
            assert (e.finished_at, e.objective) == finished[e.id]
            assert e.attempt == 1
            assert len(s.execute(select(Attempt).where(Attempt.experiment_id == e.id)).scalars().all()) == 1


@pytest.mark.process
def test_concurrent_claims_of_one_experiment_have_one_winner(database_url):
    """The claim is a compare-and-set: of many simultaneous deliveries exactly one runs."""
    from app.store import ledger, lifecycle
    from app.store.db import session_scope
    from app.domain.states import ExperimentState
    from app.store.models import Attempt, Experiment, Task
    from app.store.pool import GpuSpec, register_worker
    from app.domain.taskspec import parse_task

    register_worker("w@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc", 1)
    spec = parse_task(mixed_task([{"tp-size": 1}]))
    with session_scope() as s:
        task = Task(name="t", status="running", spec=spec.to_dict(), engine="sglang", deployment_mode="sim",
                    strategy="list", objective="maximize_throughput", max_parallel=1, max_iterations=1, notes=[])
        exp = Experiment(task=task, seq=1, params={"tp-size": 1}, gpus_needed=1, state=ExperimentState.QUEUED, attempt=1, group="g")
        s.add_all([task, exp])
        s.flush()
        gpu_id = s.execute(select(ledger.Gpu.id)).scalar_one()
        ledger.take(s, exp.id, 1, (gpu_id,))
        s.add(Attempt(experiment_id=exp.id, number=1, state=ExperimentState.QUEUED))
        exp_id = exp.id

    results = []
    barrier = threading.Barrier(6)

    def contender(i: int):
        barrier.wait()
        results.append(lifecycle.claim(exp_id, 1, worker=f"w{i}", host="h", pid=10_000 + i))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].gpu_indices == [0]
    # A stale message of an older attempt finds nothing either.
    assert lifecycle.claim(exp_id, 0, worker="w9", host="h", pid=1) is None


@pytest.mark.integration
def test_a_failing_engine_fails_only_its_experiment(stack):
    """Error isolation: an engine that cannot start (memory fraction too low for the
    weights) fails its experiment with the engine's message; the others run, GPUs are freed."""
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, Task

    start_stack(stack, gpus=2)
    configs = [{"mem-fraction-static": 0.1}, {"mem-fraction-static": 0.99}, {"tp-size": 1}, {"tp-size": 2}]
    task_id = run_to_end(stack, mixed_task(configs, parallel=2))
    with session_scope() as s:
        assert s.get(Task, task_id).status == "completed"
        small, big, *good = s.execute(
            select(Experiment).where(Experiment.task_id == task_id).order_by(Experiment.seq)).scalars()
        for bad in (small, big):
            assert bad.state == "failed" and "memory" in bad.error.lower(), bad.error
            assert bad.engine_log and "simulated" in bad.engine_log
        # Classified from the engine's log: what the UI shows and the strategies avoid.
        assert (small.failure_kind, big.failure_kind) == ("kv_cache", "oom"), (small.error, big.error)
        assert [a.failure_kind for a in big.attempts] == ["oom"]
        assert [e.state for e in good] == ["succeeded", "succeeded"]
        assert all(e.failure_kind is None for e in good)
        big_id = big.id
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    from app import create_app

    client = create_app({"TESTING": True}).test_client()
    assert client.get(f"/api/experiments/{big_id}").json["failure"] == "out of memory at start-up"
    page = client.get(f"/experiments/{big_id}").get_data(as_text=True)
    assert "out of memory at start-up" in page and "cannot run" in page


@pytest.mark.integration
def test_two_worker_groups_share_the_work(stack):
    """Capacity grows by starting workers: two groups of 2 GPUs (as two hosts would be)
    both run experiments; an experiment's GPUs always come from one group."""
    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, Task

    start_stack(stack, workers=[
        ["--simulated-gpus", "2", "--group", "left"],
        ["--simulated-gpus", "2", "--first-gpu-index", "2", "--group", "right"],
    ])
    tps = [2, 1, 1, 2, 1, 2, 1, 1]
    task_id = run_to_end(stack, mixed_task([{"tp-size": tp} for tp in tps], parallel=4))
    with session_scope() as s:
        assert s.get(Task, task_id).status == "completed", stack.logs()
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert {e.state for e in exps} == {"succeeded"}
        assert {e.group for e in exps} == {"left", "right"}
        group_of = {g.label: g.group for g in s.execute(select(Gpu)).scalars()}
        for e in exps:
            assert len({group_of[label] for label in e.gpus}) == 1
            assert e.worker == f"gpu-{e.group}@{e.host}"
