"""A job's end and the placement of what waits for its GPUs, in one transaction
(`coordinator.end_and_place`), on both databases: what it commits together, that a failed
placement never costs the result, and that a late end places nothing."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import event, select, text

from app import coordinator
from app.coordinator import coordinate, end_and_place
from app.store import lifecycle, passes
from app.store.db import get_engine, session_scope
from app.store.models import Attempt, Experiment, Gpu, Task
from app.store.pool import GpuSpec, register_worker
from tests.helpers import OK, experiments, mixed_task, submit

pytestmark = pytest.mark.process



@pytest.fixture
def one_running(database_url):
    """One simulated GPU; a two-experiment task (parallel 1): the first running on the GPU,
    the second created ahead and waiting for it."""
    register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
    task_id = submit(mixed_task([{"tp-size": 1}, {"tp-size": 1}], parallel=1))
    (first,) = coordinate(task_id)
    assert lifecycle.claim(first.experiment_id, first.attempt, worker="gpu-g@h", host="h", pid=1) is not None
    assert [e.state for e in experiments(task_id)] == ["running", "pending"]
    return task_id, first


def commits_during(call):
    """Run `call`, counting the transactions it commits."""
    engine = get_engine()
    count = [0]

    def on_commit(_conn):
        count[0] += 1

    event.listen(engine, "commit", on_commit)
    try:
        return call(), count[0]
    finally:
        event.remove(engine, "commit", on_commit)


def test_the_end_and_the_next_placement_commit_together(one_running):
    task_id, first = one_running
    (ended, placed), commits = commits_during(
        lambda: end_and_place(first.experiment_id, first.attempt, "succeeded", **OK))
    assert commits == 1  # the end and the placement; the task's expected length learns afterwards
    assert ended.task_id == task_id and ended.seconds is not None
    done, second = experiments(task_id)
    assert [d.experiment_id for d in placed] == [second.id] and placed[0].queue == "gpu.g"
    assert (done.state, second.state) == ("succeeded", "queued")
    assert second.gpus == done.gpus and second.queued_at >= done.finished_at
    with session_scope() as s:
        assert s.execute(select(Gpu.held_by)).scalars().all() == [second.id]
        assert s.execute(select(Attempt.state).where(Attempt.experiment_id == second.id)).scalars().all() == ["queued"]


def test_a_failed_placement_keeps_the_result_and_frees_the_gpus(one_running, monkeypatch):
    task_id, first = one_running

    def place_then_fail(session, scheduler=None):
        assert coordinator_schedule(session, scheduler)  # placed and written, then it fails: all of it must roll back
        raise RuntimeError("placement bug")

    coordinator_schedule = coordinator.schedule
    monkeypatch.setattr(coordinator, "schedule", place_then_fail)
    ended, placed = end_and_place(first.experiment_id, first.attempt, "succeeded", **OK)
    assert (ended.task_id, placed) == (task_id, [])
    done, second = experiments(task_id)
    assert (done.state, done.objective) == ("succeeded", 1.0)
    assert second.state == "pending" and second.attempt == 0
    with session_scope() as s:
        assert s.execute(select(Gpu.held_by)).scalars().all() == [None]
    monkeypatch.setattr(coordinator, "schedule", coordinator_schedule)
    (again,) = coordinate(task_id)  # the coordinator's next pass places it
    assert again.experiment_id == second.id


def test_nothing_comes_between_the_end_and_a_placement_that_fails(one_running, monkeypatch):
    """A placement that fails, here on a database error (on PostgreSQL it aborts the
    transaction), is rolled back to its savepoint and the end commits in the same transaction.
    Recorded again in a second transaction, the end could find the experiment marked lost by
    upkeep's tick in between (the scheduler's lock free) and the result was dropped: the hook
    plays that tick whenever the hand-over opens a second transaction."""
    task_id, first = one_running

    def place_then_fail(session, scheduler=None):
        assert coordinator_schedule(session, scheduler)
        session.execute(text("SELECT no_such_column FROM experiments"))

    coordinator_schedule, real_scope, opened = coordinator.schedule, coordinator.session_scope, []

    @contextmanager
    def scope(*args, **kwargs):
        if opened:  # a second transaction of the same end: the tick gets in first
            with real_scope() as s:
                lifecycle.mark_lost(s, s.get(Experiment, first.experiment_id), "worker gone")
        opened.append(True)
        with real_scope(*args, **kwargs) as session:
            yield session

    monkeypatch.setattr(coordinator, "schedule", place_then_fail)
    monkeypatch.setattr(coordinator, "session_scope", scope)
    ended, placed = end_and_place(first.experiment_id, first.attempt, "succeeded", **OK)
    assert ended is not None and ended.task_id == task_id and placed == [] and len(opened) == 1
    done, second = experiments(task_id)
    assert (done.state, done.objective, second.state) == ("succeeded", 1.0, "pending")
    with session_scope() as s:
        assert s.execute(select(Gpu.held_by)).scalars().all() == [None]


def test_an_end_without_figures_leaves_them_null_and_one_with_figures_keeps_them(one_running):
    """An absent figure is SQL NULL, as in a row never written (not JSON's null)."""
    task_id, first = one_running
    _ended, (placed,) = end_and_place(first.experiment_id, first.attempt, "failed", error="engine died")
    with session_scope() as s:
        failed = s.execute(select(Experiment.id).where(Experiment.metrics.is_(None), Experiment.measured.is_(None),
                                                       Experiment.state == "failed")).scalars().all()
    assert failed == [first.experiment_id]
    assert lifecycle.claim(placed.experiment_id, placed.attempt, worker="gpu-g@h", host="h", pid=1) is not None
    end_and_place(placed.experiment_id, placed.attempt, "succeeded", objective=1.0, slo_ok=True,
                  metrics={"score": 1}, measured={"throughput": 2.0})
    _failed, succeeded = experiments(task_id)
    assert (succeeded.metrics, succeeded.measured) == ({"score": 1}, {"throughput": 2.0})


def test_a_late_end_records_and_places_nothing(one_running):
    task_id, first = one_running
    with session_scope() as s:
        lifecycle.mark_lost(s, s.get(Experiment, first.experiment_id), "worker gone")
    assert end_and_place(first.experiment_id, first.attempt, "succeeded", **OK) == (None, [])
    lost, second = experiments(task_id)
    assert (lost.state, lost.objective) == ("pending", None)  # back in line; the late result is not kept
    assert second.state == "pending"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_job_ends_without_waiting_for_its_tasks_coordinator_pass(one_running):
    """While the coordinator's pass holds the task's row, a job writes the task's experiments:
    its end (and placement), and any transaction that updates an experiment row twice, after
    which PostgreSQL checks the task key (FOR KEY SHARE), which FOR UPDATE would make wait for
    the whole pass (and deadlock with a pass that writes the same experiment). With a lock
    timeout on every transaction, both complete while the task is held."""
    task_id, first = one_running
    engine = get_engine()

    def lock_timeout(conn):
        conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")

    event.listen(engine, "begin", lock_timeout)
    try:
        with session_scope() as pass_in_progress:
            assert lifecycle.lock_task(pass_in_progress, task_id) is not None
            ended, placed = end_and_place(first.experiment_id, first.attempt, "succeeded", **OK)
            with session_scope() as job:
                exp = job.get(Experiment, placed[0].experiment_id)
                exp.phase = "starting"
                job.flush()
                exp.phase = "benchmarking"  # the second update of the row: the key check
        assert ended.task_id == task_id and len(placed) == 1
        assert experiments(task_id)[1].phase == "benchmarking"
    finally:
        event.remove(engine, "begin", lock_timeout)


def test_a_transient_database_error_in_a_pass_does_not_fail_the_task(one_running, monkeypatch):
    """A deadlock victim (PostgreSQL rolls one transaction back) is retried by the next pass;
    only a real fault of the task's own fails it."""
    from sqlalchemy.exc import OperationalError

    task_id, first = one_running
    real_advance = coordinator.advance

    def deadlocked(session, task):
        raise OperationalError("UPDATE experiments", {}, Exception("deadlock detected"))

    monkeypatch.setattr(coordinator, "advance", deadlocked)
    coordinate(task_id)
    with session_scope() as s:
        assert s.get(Task, task_id).status == "running"
    monkeypatch.setattr(coordinator, "advance", real_advance)
    ended, _placed = end_and_place(first.experiment_id, first.attempt, "succeeded", **OK)
    assert ended.task_id == task_id
    assert [e.state for e in experiments(task_id)] == ["succeeded", "queued"]


def statements_during(call):
    """Run `call`, collecting the statements it sends (not the pool's connection ping)."""
    statements: list[str] = []
    listener = lambda _c, _cur, statement, *_a: statements.append(" ".join(statement.split()))  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        return call(), statements
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)


def test_a_hand_over_sends_few_statements_and_locks_no_row_by_reading_it(one_running):
    """The hand-over is on the path between one experiment's end and the next one's start, and
    every statement is a round trip: the end and the claim are compare-and-set UPDATEs (the row
    locked by the statement that writes it), the pass reads in two statements, the GPUs are
    locked inside the UPDATE that frees or takes them; the placement's savepoint is two (the
    result kept whatever the placement does). 22 statements for `end_and_place`, 4 for the
    claim and 2 for the expected length before; 12 for `end_and_place` without the savepoint."""
    task_id, first = one_running
    (ended, placed), hand_over = statements_during(
        lambda: end_and_place(first.experiment_id, first.attempt, "succeeded", **OK))
    (claimed,) = placed
    learned, learning = statements_during(lambda: lifecycle.learn_length(ended))
    started, claiming = statements_during(
        lambda: lifecycle.claim(claimed.experiment_id, claimed.attempt, worker="gpu-g@h", host="h", pid=1))
    assert learned == task_id and started is not None and started.gpu_labels == ["h:0"]
    assert len(hand_over) <= 14, hand_over
    assert sum(s.startswith(("SAVEPOINT", "RELEASE SAVEPOINT")) for s in hand_over) == 2, hand_over
    assert len(claiming) == 3 and len(learning) == 1, (claiming, learning)
    locked_reads = [s for s in hand_over + claiming + learning if s.startswith("SELECT") and "FOR UPDATE" in s]
    assert all(s.startswith("SELECT locks.value FROM locks") for s in locked_reads), locked_reads


def test_an_experiment_that_ends_while_waiting_for_host_cpu_loses_its_wait_reason(one_running):
    """The pages show a wait reason whatever the state: an end clears it with the phase."""
    task_id, first = one_running
    lifecycle.set_phase(first.experiment_id, first.attempt, "waiting for host CPU", "needs 4 cores, 1 free")
    assert experiments(task_id)[0].wait_reason == "needs 4 cores, 1 free"
    end_and_place(first.experiment_id, first.attempt, "failed", error="engine died")
    ended = experiments(task_id)[0]
    assert (ended.state, ended.phase, ended.wait_reason) == ("failed", None, None)


def test_an_experiment_put_back_in_line_has_no_figures_sql_null(one_running):
    """What its last attempt measured is cleared to SQL NULL, as the end writes an absent
    figure (not JSON's null, which `IS NULL` does not find)."""
    task_id, first = one_running
    end_and_place(first.experiment_id, first.attempt, "failed", error="engine died", metrics={"score": 1},
                  measured={"throughput": 2.0})
    with session_scope() as s:
        lifecycle.back_to_pending(s, s.get(Experiment, first.experiment_id))
    with session_scope() as s:
        cleared = s.execute(select(Experiment.id).where(Experiment.metrics.is_(None), Experiment.measured.is_(None),
                                                        Experiment.state == "pending")).scalars().all()
    assert first.experiment_id in cleared


def cancel_meanwhile(monkeypatch, task_id: int) -> None:
    """Between a pass's read and its writes, the task's pass (under the task's lock only: a
    stop rule, a cancel, a failed task) cancels what it has not started. On PostgreSQL in a
    transaction of its own, committed, as it happens; SQLite's pass holds the write lock from
    its start, so no other transaction commits in between: the cancel is written in the pass's
    own session, which is what its writes then find all the same."""
    real_plan = passes.PassReader.plan

    def plan_then_cancel(reader):
        planned = real_plan(reader)

        def cancel(session):
            assert lifecycle.lock_task(session, task_id) is not None
            lifecycle.cancel_unstarted(session, task_id, "task stopped")

        if reader.session.get_bind().dialect.name == "sqlite":
            cancel(reader.session)
            reader.session.flush()
        else:
            with session_scope() as other:
                cancel(other)
        return planned

    monkeypatch.setattr(passes.PassReader, "plan", plan_then_cancel)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_experiment_cancelled_after_the_pass_read_it_is_not_placed(one_running, monkeypatch):
    """The placement's write is a compare-and-set (waiting, in the attempt read): the end
    commits, its placement rolls back to its savepoint, no GPU is taken and nothing is sent;
    the cancelled experiment stays cancelled (was: QUEUED over CANCELLED, GPUs taken, sent,
    and run: the claim refuses only cancelled tasks)."""
    task_id, first = one_running
    cancel_meanwhile(monkeypatch, task_id)
    ended, placed = end_and_place(first.experiment_id, first.attempt, "succeeded", **OK)
    assert ended is not None and placed == []
    done, second = experiments(task_id)
    assert (done.state, second.state, second.gpus, second.attempt) == ("succeeded", "cancelled", [], 0)
    with session_scope() as s:
        assert s.execute(select(Gpu.held_by)).scalars().all() == [None]
        assert s.execute(select(Attempt).where(Attempt.experiment_id == second.id)).first() is None


def test_a_pass_whose_placement_was_cancelled_meanwhile_places_nothing(database_url, monkeypatch):
    """Two placements written in one statement, one of them cancelled since the pass read
    it: the pass detects it by the rows written and places nothing (no GPU taken)."""
    tasks = [submit(mixed_task([{"tp-size": 1}], parallel=1)) for _ in range(2)]
    for task_id in tasks:  # no GPU yet: each task's experiment waits
        assert coordinate(task_id) == []
    register_worker("gpu-g@h", "g", "h", "gpu.g", 2, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(2)],
                    "inc1", 1)
    cancel_meanwhile(monkeypatch, tasks[0])
    with pytest.raises(coordinator.PlacementConflict):
        with session_scope() as s:
            coordinator.schedule(s)
    with session_scope() as s:
        assert s.execute(select(Gpu.held_by)).scalars().all() == [None, None]
    assert [e.state for t in tasks for e in experiments(t)] == [
        "pending" if database_url.startswith("sqlite") else "cancelled", "pending"]


def test_a_coordinator_job_whose_placement_lost_a_race_ends_normally_and_asks_again(database_url, monkeypatch):
    """The coordinator's Celery job meets the same race in its pass's placement: the placement
    rolls back (no GPU taken, nothing sent), the job returns normally instead of failing (a
    failure in Flower for a race), and asks for the next pass at once, which places what waits."""
    from app import celery_app

    tasks = [submit(mixed_task([{"tp-size": 1}], parallel=1)) for _ in range(2)]
    for task_id in tasks:
        assert coordinate(task_id) == []
    register_worker("gpu-g@h", "g", "h", "gpu.g", 2, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(2)],
                    "inc1", 1)
    sent, asked = [], []
    monkeypatch.setattr(celery_app, "send_experiments", lambda dispatches: sent.extend(dispatches))
    monkeypatch.setattr(celery_app, "request_coordination", asked.append)
    with monkeypatch.context() as m:
        cancel_meanwhile(m, tasks[0])
        assert celery_app.coordinate(tasks[1]) == 0
    assert (sent, asked) == ([], [tasks[1]])
    with session_scope() as s:
        assert s.execute(select(Gpu.held_by)).scalars().all() == [None, None]
        assert s.execute(select(Attempt)).first() is None
    waiting = [e.id for t in tasks for e in experiments(t) if e.state == "pending"]  # SQLite: the cancel rolled back
    assert celery_app.coordinate(tasks[1]) == len(waiting)  # the pass asked for places what still waits
    assert sorted(d.experiment_id for d in sent) == waiting


def test_a_coordinator_pass_whose_placement_meets_a_transient_error_ends_normally(database_url, monkeypatch):
    """A transient database error in the pass's placement (a deadlock victim, the database
    restarting) rolls back and ends the pass with nothing sent, not as a failed job; it does
    not ask again at once (that would spin while the database is away): the tick places. A
    planner bug that grants a GPU twice is raised, not taken for a race."""
    from sqlalchemy.exc import OperationalError

    from app.store import ledger

    register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
    task_id = submit(mixed_task([{"tp-size": 1}], parallel=1))
    asked: list = []

    def deadlock_victim(session, scheduler=None):
        raise OperationalError("UPDATE experiments ...", {}, Exception("deadlock detected"))

    with monkeypatch.context() as m:
        m.setattr(coordinator, "schedule", deadlock_victim)
        assert coordinator.coordinate(task_id, again=lambda: asked.append(task_id)) == []
    assert asked == []

    def granted_twice(session, scheduler=None):
        ledger.take_all(session, [(1, 1, (1,)), (2, 1, (1,))])

    with monkeypatch.context() as m:
        m.setattr(coordinator, "schedule", granted_twice)
        with pytest.raises(ledger.GrantedTwice):
            coordinator.coordinate(task_id, again=lambda: asked.append(task_id))
    assert asked == []
    (d,) = coordinator.coordinate(task_id)  # the next pass places what waits
    assert d.experiment_id == experiments(task_id)[0].id
