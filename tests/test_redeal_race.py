"""The longest-first re-deal of a task's tags (coordinator._renew) against a finishing job's
placement on PostgreSQL: the task's lock (FOR NO KEY UPDATE) does not hold off
`end_and_place`, which may queue an experiment the pass read as waiting. That experiment
keeps the tag it was placed with: a tag written onto a queued row would be served twice. Nor
does it hold off a job's end: the predictions the pass renews are written only onto rows still
in the state it read."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.process


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_experiment_placed_or_ended_during_the_re_deal_keeps_its_tag_and_prediction(database_url, monkeypatch):
    import app.coordinator as coordinator
    from app.store import lifecycle
    from app.store.db import session_scope
    from app.store.models import Experiment
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import OK, experiments, mixed_task, run_attempt, submit

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc1", 1)
    short, long = {"tp-size": 1, "cuda-graph-max-bs": 1}, {"tp-size": 1, "cuda-graph-max-bs": 2}
    task_id = submit(mixed_task([long, short, short, short, short, long], parallel=2))
    first = coordinator.coordinate(task_id)  # all six created, two placed
    placed = [*run_attempt(first[0], seconds=5.0), *run_attempt(first[1], seconds=1.0)]  # 3 and 4 queued
    tags = {e.seq: e.share_tag for e in experiments(task_id)}
    assert tags[5] < tags[6]
    with session_scope() as s:  # an earlier prediction of 5, which the pass renews to 1 s
        s.get(Experiment, experiments(task_id)[4].id).expected_s = 30.0
    repredict = coordinator._repredict

    def a_job_ends_meanwhile(exps, lengths):
        """After the pass has read its history: experiment 3 ends in another transaction, and
        its placement queues the head of the task's waiting ones, 5 (the pass re-deals 5's tag
        to the long 6 and renews 5's prediction)."""
        assert lifecycle.claim(placed[0].experiment_id, placed[0].attempt, worker="gpu-g@h", host="h", pid=1)
        _, queued = coordinator.end_and_place(placed[0].experiment_id, placed[0].attempt, "succeeded", **OK)
        assert [d.experiment_id for d in queued] == [experiments(task_id)[4].id]
        return repredict(exps, lengths)

    monkeypatch.setattr(coordinator, "_repredict", a_job_ends_meanwhile)
    assert coordinator.coordinate(task_id) == []
    exps = experiments(task_id)
    assert (exps[4].state, exps[4].share_tag) == ("queued", tags[5])  # placed with its tag, and keeps it
    assert (exps[5].state, exps[5].share_tag) == ("pending", tags[5])  # the long one: the head's tag
    # Placed and ended meanwhile: 5 keeps the prediction it was placed with, 3 gets none.
    assert (exps[4].expected_s, exps[2].state, exps[2].expected_s) == (30.0, "succeeded", None)
    assert exps[5].expected_s == pytest.approx(5.0, rel=0.05)  # still waiting: renewed


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_pass_locks_the_rows_it_renews_oldest_first(database_url):
    """The pass writes first predictions onto running rows that finishing jobs are ending while
    their placements take waiting ones. Holding a waiting row while it waits for the running row
    a job holds, it would deadlock with that job's placement of the waiting one (PostgreSQL
    breaks that after a second, a round of hand-overs stalled). It locks its rows in id order:
    blocked on the running (older) one, it holds no waiting one, and the job places it at once
    (a lock timeout says otherwise)."""
    import threading
    import time

    from sqlalchemy import text

    import app.coordinator as coordinator
    from app.store import lifecycle
    from app.store.db import get_engine, session_scope
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, mixed_task, submit

    register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
    task_id = submit(mixed_task([{"tp-size": 1, "cuda-graph-max-bs": b} for b in (1, 2)], parallel=1))
    (d,) = coordinator.coordinate(task_id)
    assert lifecycle.claim(d.experiment_id, d.attempt, worker="gpu-g@h", host="h", pid=1)
    running, waiting = (e.id for e in experiments(task_id))
    assert running < waiting
    with get_engine().begin() as c:  # the running row's newest version last in the table: a scan meets it last
        c.execute(text("UPDATE experiments SET phase = phase WHERE id = :id"), {"id": running})
    job = get_engine().connect()
    job_tx = job.begin()
    job.execute(text("UPDATE experiments SET phase = 'stopping' WHERE id = :id"), {"id": running})  # ending it
    failed: list[BaseException] = []

    def the_pass() -> None:
        try:
            with session_scope() as s:
                coordinator._write_renewed(s, {running: 2.0, waiting: 3.0},
                                           {running: "running", waiting: "pending"}, {})
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    thread = threading.Thread(target=the_pass)
    thread.start()
    deadline = time.monotonic() + 30
    with get_engine().connect() as watch:  # until the pass waits for the job's row lock
        while not watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'")).scalar_one():
            assert time.monotonic() < deadline and thread.is_alive(), "the pass never waited for the job's row"
            time.sleep(0.01)
    job.execute(text("SET LOCAL lock_timeout = '5s'"))
    job.execute(text("UPDATE experiments SET state = 'queued' WHERE id = :id"), {"id": waiting})  # its placement
    job_tx.commit()
    job.close()
    thread.join(30)
    assert not thread.is_alive() and not failed
    by_id = {e.id: e for e in experiments(task_id)}
    assert (by_id[running].expected_s, by_id[waiting].expected_s) == (2.0, None)  # placed meanwhile: not renewed
