"""The coordinator's decisions against a real store, without Celery: what it creates,
what it dispatches, and how it recovers from lost workers and lost messages."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.store import lifecycle
from app.coordinator import coordinate, end_and_place
from app.domain.placement import CAPPED
from app.store.db import session_scope
from app.store.models import Attempt, Experiment, Gpu, Task, Worker, utcnow
from app.store.pool import GpuSpec, register_worker
from app.task_service import cancel_task, retry_failed
from app.upkeep import tick
from tests.helpers import experiments, mixed_task, run_attempt, submit

pytestmark = pytest.mark.unit


@pytest.fixture
def pool(db, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc1", 1)


def test_coordinate_is_idempotent_and_respects_max_parallel(pool):
    task_id = submit(mixed_task([{"tp-size": 1}] * 8, parallel=2))
    first = coordinate(task_id)
    assert len(first) == 2 and {d.queue for d in first} == {"gpu.g"}
    assert coordinate(task_id) == []  # nothing changed: nothing new
    exps = experiments(task_id)
    # The list strategy does not learn from results: its next two rounds wait, created ahead,
    # and the scheduler holds the task to two running.
    assert [e.state for e in exps] == ["queued", "queued"] + ["pending"] * 4
    assert all(len(e.gpus) == 1 for e in exps[:2])
    assert {e.wait_reason for e in exps[2:]} == {CAPPED}


def test_time_limits_come_from_the_task(pool, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_TIME_LIMIT_GRACE", "30")
    task_id = submit(mixed_task([{"tp-size": 1}]))
    (d,) = coordinate(task_id)
    assert (d.soft_time_limit, d.time_limit) == (120, 150)


def test_a_stored_spec_without_a_timeout_has_the_specs_default(pool, monkeypatch):
    """A pass reads the time limit from the stored spec in SQL: one stored without it (written
    before submission normalised specs, or by hand) gets the spec model's default, as its
    parsed spec does, instead of NULL failing every pass."""
    monkeypatch.setenv("AUTOTUNER_TIME_LIMIT_GRACE", "30")
    task_id = submit(mixed_task([{"tp-size": 1}]))
    with session_scope() as s:
        task = s.get(Task, task_id)
        optimization = {k: v for k, v in task.spec["optimization"].items() if k != "timeout_per_iteration"}
        task.spec = {**task.spec, "optimization": optimization}
        default = task.parsed_spec.optimization.timeout_per_iteration
    (d,) = coordinate(task_id)
    assert (d.soft_time_limit, d.time_limit) == (default, default + 30)


def test_task_completes_when_the_list_is_done_and_best_is_set(pool):
    task_id = submit(mixed_task([{"tp-size": 1}, {"tp-size": 2}], parallel=4))
    for d in coordinate(task_id):
        run_attempt(d)
    assert coordinate(task_id) == []
    with session_scope() as s:
        assert s.get(Task, task_id).status == "completed"
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None


def test_all_failed_means_task_failed(pool):
    task_id = submit(mixed_task([{"tp-size": 1}]))
    (d,) = coordinate(task_id)
    run_attempt(d, "failed", error="boom")
    coordinate(task_id)
    with session_scope() as s:
        task = s.get(Task, task_id)
        assert task.status == "failed" and "all 1 experiments" in task.error


def test_experiment_bigger_than_any_group_fails_with_reason(pool):
    task_id = submit(mixed_task([{"tp-size": 8}, {"tp-size": 1}]))
    coordinate(task_id)
    big, small = experiments(task_id)
    assert big.state == "failed" and "largest worker group has 4" in big.error
    assert small.state == "queued"


def test_dead_worker_makes_attempt_lost_and_experiment_retried(pool):
    task_id = submit(mixed_task([{"tp-size": 2}]))
    (d,) = coordinate(task_id)
    lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    with session_scope() as s:
        s.get(Worker, "gpu-g@h").last_heartbeat = utcnow() - timedelta(seconds=120)
    assert tick() == []  # the only group is gone: nothing can be placed
    (exp,) = experiments(task_id)
    assert exp.state == "pending" and "lost" in exp.error
    with session_scope() as s:
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
        assert [a.state for a in s.execute(select(Attempt)).scalars()] == ["lost"]
    # The worker comes back (a new incarnation): the experiment runs again as attempt 2.
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc2", 2)
    (again,) = coordinate(task_id)
    assert again.attempt == 2
    with session_scope() as s:
        assert [a.state for a in s.execute(select(Attempt).order_by(Attempt.number)).scalars()] == ["lost", "queued"]


def test_restarted_worker_gives_up_what_its_previous_process_ran(pool):
    task_id = submit(mixed_task([{"tp-size": 1}]))
    (d,) = coordinate(task_id)
    lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc2", 2)
    (exp,) = experiments(task_id)
    assert exp.state == "pending" and "restarted" in exp.error
    # The old message (attempt 1) arriving late finds nothing to claim.
    assert lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=3) is None


def test_attempts_are_capped(pool):
    data = mixed_task([{"tp-size": 1}])
    data["optimization"]["max_attempts"] = 2
    task_id = submit(data)
    for incarnation in ("a", "b"):
        (d,) = coordinate(task_id)
        lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
        register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], incarnation, 2)
    (exp,) = experiments(task_id)
    assert exp.state == "failed" and "lost 2 time(s)" in exp.error


def test_an_operator_retry_gives_the_attempts_again(pool):
    """An experiment that failed after max_attempts lost attempts, retried by the operator,
    runs max_attempts more: the lost attempts before the retry no longer count (they failed
    it again at its first loss after the retry)."""
    data = mixed_task([{"tp-size": 1}])
    data["optimization"]["max_attempts"] = 2
    task_id = submit(data)

    def lose_one(incarnation: str) -> Experiment:
        (d,) = coordinate(task_id)
        lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
        register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)],
                        incarnation, 2)
        (exp,) = experiments(task_id)
        return exp

    lose_one("a")
    assert lose_one("b").state == "failed"
    assert retry_failed(task_id) == 1
    exp = lose_one("c")  # attempt 3, the first since the retry: back in line
    assert (exp.state, exp.attempt, exp.retried_after) == ("pending", 3, 2)
    exp = lose_one("d")
    assert exp.state == "failed" and "lost 2 time(s)" in exp.error


def test_stale_queued_job_is_sent_again_with_the_same_attempt(pool, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_REQUEUE_AFTER", "60")
    task_id = submit(mixed_task([{"tp-size": 1}]))
    (d,) = coordinate(task_id)
    assert tick() == []
    with session_scope() as s:
        s.get(Experiment, d.experiment_id).queued_at = utcnow() - timedelta(seconds=61)
    (again,) = tick()
    assert (again.experiment_id, again.attempt) == (d.experiment_id, d.attempt)


def test_cancel_frees_waiting_and_queued_experiments(pool):
    task_id = submit(mixed_task([{"tp-size": 4}, {"tp-size": 4}], parallel=2))
    first, = coordinate(task_id)  # only one 4-GPU experiment fits; the other waits
    cancel_task(task_id)
    coordinate(task_id)
    with session_scope() as s:
        assert s.get(Task, task_id).status == "cancelled"
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    assert {e.state for e in experiments(task_id)} == {"cancelled"}
    assert lifecycle.claim(first.experiment_id, first.attempt, worker="gpu-g@h", host="h", pid=1) is None


def test_running_experiment_sees_cancellation(pool):
    task_id = submit(mixed_task([{"tp-size": 1}]))
    (d,) = coordinate(task_id)
    lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    assert lifecycle.should_stop(d.experiment_id) is False
    cancel_task(task_id)
    assert lifecycle.should_stop(d.experiment_id) is True
    coordinate(task_id)
    with session_scope() as s:
        assert s.get(Task, task_id).status == "cancelling"  # waits for the running one
    ended, _ = end_and_place(d.experiment_id, d.attempt, "cancelled", error="cancelled")
    assert ended is not None
    coordinate(task_id)
    with session_scope() as s:
        assert s.get(Task, task_id).status == "cancelled"


def test_timeout_beyond_the_visibility_timeout_is_refused_and_nothing_stored(db, monkeypatch):
    from app.domain.taskspec import TaskSpecError

    monkeypatch.setenv("AUTOTUNER_VISIBILITY_TIMEOUT", "600")
    data = mixed_task([{"tp-size": 1}])
    data["optimization"]["timeout_per_iteration"] = 3600
    with pytest.raises(TaskSpecError) as info:
        submit(data)
    assert info.value.errors[0]["loc"] == ["optimization", "timeout_per_iteration"]
    with session_scope() as s:
        assert s.execute(select(Task)).first() is None


def test_two_live_workers_cannot_register_the_same_gpu(pool):
    from app.store.pool import PoolConflict

    with pytest.raises(PoolConflict, match="already belongs to online worker gpu-g@h"):
        register_worker("gpu-other@h", "other", "h", "gpu.other", 1, [GpuSpec(3, "sim", 1, "u3", True)], "x", 5)
    # Disjoint indices are fine, and once the owner is offline its GPUs may move.
    register_worker("gpu-other@h", "other", "h", "gpu.other", 1, [GpuSpec(4, "sim", 1, "u4", True)], "x", 5)
    with session_scope() as s:
        s.get(Worker, "gpu-g@h").online = False
    register_worker("gpu-other@h", "other", "h", "gpu.other", 2, [GpuSpec(3, "sim", 1, "u3", True), GpuSpec(4, "sim", 1, "u4", True)], "y", 5)


def test_a_worker_name_runs_once_per_host(db):
    import os
    import socket

    from app.store.pool import PoolConflict

    host = socket.gethostname()
    register_worker("gpu-g@me", "g", host, "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "one", os.getpid())
    with pytest.raises(PoolConflict, match="already running"):
        register_worker("gpu-g@me", "g", host, "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "two", os.getpid() + 100000)


def test_gpus_of_a_lost_attempt_stay_fenced_until_its_engine_is_gone(pool, caplog):
    """A lost attempt may have left its engine running: its GPUs are not handed on until a
    reaper confirms the engine stopped, or, when none can (the host is unreachable), after
    AUTOTUNER_ENGINE_REAP_TIMEOUT with a warning."""
    task_id = submit(mixed_task([{"tp-size": 2}, {"tp-size": 2}], parallel=1))
    (d,) = coordinate(task_id)
    lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    lifecycle.record_engine(d.experiment_id, d.attempt, {"runtime": "process", "pid": 10, "pgid": 10})
    with session_scope() as s:
        s.get(Worker, "gpu-g@h").last_heartbeat = utcnow() - timedelta(seconds=120)
    tick()
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc2", 2)
    (again,) = coordinate(task_id)
    with session_scope() as s:
        lost = s.execute(select(Attempt).where(Attempt.number == 1)).scalar_one()
        fenced = s.execute(select(Gpu).where(Gpu.fenced_by == lost.id)).scalars().all()
        assert len(fenced) == 2 and all(g.held_by is None for g in fenced)
        # The retry was placed on the two other GPUs, never on the fenced ones.
        assert set(s.get(Experiment, again.experiment_id).gpus).isdisjoint({g.label for g in fenced})
        for g in fenced:
            g.fenced_at = utcnow() - timedelta(seconds=301)
    with caplog.at_level("WARNING", logger="app.coordinator"):
        tick()
    with session_scope() as s:
        assert s.execute(select(Gpu).where(Gpu.fenced_by.is_not(None))).first() is None
    assert "AUTOTUNER_ENGINE_REAP_TIMEOUT" in caplog.text


def test_a_job_killed_without_a_result_is_reaped_from_its_claim(pool):
    """The reaper's deadline (the timeout and twice AUTOTUNER_TIME_LIMIT_GRACE) counts from the
    attempt's claim, as Celery's time limit does, not from the experiment's start, which a wait
    for host CPU moves to the end of that wait (lifecycle.set_phase(restart=True))."""
    task_id = submit(mixed_task([{"tp-size": 1}], parallel=1))  # timeout_per_iteration 120 s, grace 60 s
    (d,) = coordinate(task_id)
    lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    lifecycle.set_phase(d.experiment_id, d.attempt, "starting", restart=True)  # admitted just now
    with session_scope() as s:
        s.execute(select(Attempt).where(Attempt.experiment_id == d.experiment_id)).scalar_one().started_at -= (
            timedelta(seconds=120 + 2 * 60 + 1))
    tick()
    (exp,) = experiments(task_id)
    assert exp.state == "timed_out" and "after its claim" in exp.error


def test_a_confirmed_stop_unfences_at_once(pool):
    task_id = submit(mixed_task([{"tp-size": 4}]))
    (d,) = coordinate(task_id)
    lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc2", 2)
    assert coordinate(task_id) == []  # all four GPUs fenced: the retry waits
    with session_scope() as s:
        lost_id = s.execute(select(Attempt.id).where(Attempt.number == 1)).scalar_one()
    lifecycle.engine_stopped(lost_id)
    (again,) = coordinate(task_id)
    assert again.attempt == 2


def test_a_tasks_next_step_does_not_read_its_measurements_or_engine_logs(pool):
    """The pass an experiment's end triggers reads the task's history for the strategy and the
    length model, not what the experiments measured or logged (up to 20 KB each): those
    would be read again at every end of a long task."""
    from sqlalchemy import event

    from app.store.db import get_engine

    task_id = submit(mixed_task([{"tp-size": 1}] * 8, parallel=2))
    (d, *_) = coordinate(task_id)
    run_attempt(d, objective=1.0, slo_ok=True, metrics={"scenarios": ["x" * 1000]}, engine_log="engine said " * 100)
    statements: list[str] = []
    listener = lambda _c, _cur, statement, *_a: statements.append(statement)  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        coordinate(task_id)
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    assert len(experiments(task_id)) == 7  # the step ran: the next one was created
    reads = [s for s in statements if s.lstrip().startswith("SELECT") and "FROM experiments" in s]
    assert any("experiments.params" in s for s in reads)  # the history was read
    assert not any("experiments.metrics" in s or "experiments.engine_log" in s for s in reads)


def test_a_tasks_waiting_experiments_are_served_longest_predicted_first(pool):
    """Once results are in, the task's waiting experiments take its own fair-share tags again,
    the longest predicted first: the next GPU freed goes to the long one created after a
    short one. The task has created all it will (no new experiment in that pass), and
    another task's tags are not touched. The short one moved back loses the start promised to
    it at the head: kept, its reservation would be strict at once when it is the head again."""
    short, long = {"tp-size": 1, "cuda-graph-max-bs": 1}, {"tp-size": 1, "cuda-graph-max-bs": 2}
    task_id = submit(mixed_task([long, short, short, short, short, long], parallel=2))
    first = coordinate(task_id)  # all six created (two rounds ahead), two placed
    other_id = submit(mixed_task([short] * 3, parallel=1))
    coordinate(other_id)
    placed = [*run_attempt(first[0], seconds=5.0), *run_attempt(first[1], seconds=1.0)]
    exps = experiments(task_id)
    assert [e.state for e in exps] == ["succeeded"] * 2 + ["queued"] * 2 + ["pending"] * 2
    tags = {e.seq: e.share_tag for e in exps}
    others = {e.id: e.share_tag for e in experiments(other_id)}
    assert tags[5] < tags[6]  # the short one first, in creation order
    with session_scope() as s:
        s.get(Experiment, exps[4].id).promised_start = utcnow() - timedelta(seconds=600)

    coordinate(task_id)  # learns from the two results: the long one is predicted 5 s, the short 1 s
    exps = experiments(task_id)
    assert (exps[4].expected_s, exps[5].expected_s) == pytest.approx((1.0, 5.0), rel=0.05)
    assert (exps[5].share_tag, exps[4].share_tag) == (tags[5], tags[6])  # dealt out again, the same tags
    assert exps[4].promised_start is None
    assert {e.id: e.share_tag for e in experiments(other_id)} == others
    (nxt,) = run_attempt(placed[0])
    assert nxt.experiment_id == exps[5].id


def test_a_task_submitted_after_a_backfill_starts_at_the_others_position(pool):
    """Task A's 4-GPU head waits with the reservation while a later 2-GPU and a later 1-GPU
    experiment of A backfill; one 2-GPU experiment of A waits between them. The virtual time
    is measured by A's position (its smallest waiting tag, the head's), not by the backfilled
    tag: a task B submitted now starts there, after A's head (older, same tag) and before A's
    later waiting experiment, as fair queuing says, instead of behind it."""
    from app.store.models import Lock
    from app.store.passes import QUEUE_ORDER

    a = submit(mixed_task([{"tp-size": 1}, {"tp-size": 4}, {"tp-size": 2}, {"tp-size": 2}, {"tp-size": 1}]))
    placed = coordinate(a)
    first, head, wide, between, short = experiments(a)
    assert {d.experiment_id for d in placed} == {first.id, wide.id, short.id}  # 4 GPUs in use
    assert head.share_tag < between.share_tag < short.share_tag
    with session_scope() as s:
        assert s.execute(select(Lock.value).where(Lock.name == "scheduler")).scalar_one() == head.share_tag

    b = submit(mixed_task([{"tp-size": 1}]))
    assert coordinate(b) == []  # nothing free
    (new,) = experiments(b)
    assert new.share_tag == head.share_tag
    with session_scope() as s:
        queue = s.execute(select(Experiment.id).where(Experiment.state == "pending").order_by(*QUEUE_ORDER)).scalars()
        assert list(queue) == [head.id, new.id, between.id]
