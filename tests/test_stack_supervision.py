"""Long-lived processes supervise themselves: a fatal Celery error is a non-zero exit, and
the embedded stack restarts a child that exited (up to a budget), with real processes."""
from __future__ import annotations

import sys

import pytest

from app import stack as stack_module
from app.stack import Stack



@pytest.mark.unit
def test_a_fatal_worker_error_is_a_non_zero_exit(monkeypatch):
    from app import celery_app

    calls = []
    monkeypatch.setattr(celery_app.app, "start", lambda argv: calls.append(argv) or 1)
    with pytest.raises(SystemExit) as exc:
        celery_app.run_worker_process(["-Q", "control"])
    assert exc.value.code == 1 and calls == [["worker", "-Q", "control"]]
    monkeypatch.setattr(celery_app.app, "start", lambda argv: 0)
    celery_app.run_worker_process(["-Q", "control"])  # a clean stop returns normally


@pytest.mark.process
def test_the_embedded_stack_restarts_a_dead_child_then_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_module, "MAX_RESTARTS", 2)
    s = Stack(home=tmp_path)
    counter = tmp_path / "starts"
    script = f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(3)"
    child = s._spawn("flaky", [sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"})
    try:
        for expected_starts in (2, 3):
            child.proc.wait(timeout=30)
            restarted, give_up = s.supervise()
            assert give_up is None
            assert restarted == [f"flaky exited with status 3; restarted (see {child.log})"]
            child.proc.wait(timeout=30)
            assert counter.read_text() == "x" * expected_starts
        restarted, give_up = s.supervise()
        assert restarted == [] and give_up.startswith("flaky exited 3 times within 60s (last status 3)")
    finally:
        s.stop()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.integration
def test_sigkill_of_the_coordinator_mid_task_leaves_nothing_and_a_restart_carries_on(stack):
    """No embedded beat to orphan (the tick is a thread of the main process), the pool
    children die with their parent, and a new coordinator finishes the task from the store:
    every experiment succeeds once, no GPU is held, the worker never noticed. A job the killed
    coordinator committed but never sent is re-sent by the new one's tick after
    AUTOTUNER_REQUEUE_AFTER (3 s here)."""
    import os
    import signal

    from sqlalchemy import select

    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, Task
    from app.task_service import create_task
    from tests.helpers import alive, mixed_task, start_stack, wait_for, wait_gone, wait_for_end

    stack.env["AUTOTUNER_REQUEUE_AFTER"] = "3"
    start_stack(stack, gpus=2)
    coordinator = next(proc for name, proc, _ in stack.procs if name == "coordinator")
    pool = wait_for(lambda: len(_children(coordinator.pid)) >= 2 and _children(coordinator.pid), 60,
                    "the coordinator's pool processes", stack)
    task_id = create_task(parse_task(mixed_task([{"tp-size": 1}] * 6, parallel=2, startup=1)))

    def finished() -> int:
        with session_scope() as s:
            return len(s.execute(select(Experiment.id).where(Experiment.task_id == task_id,
                                                             Experiment.finished_at.is_not(None))).all())

    wait_for(lambda: finished() >= 1, 60, "the first experiment to finish", stack)
    assert all(alive(p) for p in pool)
    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.wait()
    wait_gone(pool)
    stack.start("coordinator-restarted", "coordinator", "--concurrency", "2")

    wait_for_end(stack, task_id, 120, "the task to end under the new coordinator")
    with session_scope() as s:
        assert s.get(Task, task_id).status == "completed"
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all()
        assert len(exps) == 6 and {e.state for e in exps} == {"succeeded"}
        attempts = s.execute(select(Attempt.state).join(Experiment).where(Experiment.task_id == task_id)).scalars()
        assert sorted(attempts) == ["succeeded"] * 6
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None
    assert [name for name, proc, _ in stack.procs if proc.poll() is not None] == ["coordinator"], stack.logs()


@pytest.mark.process
def test_the_web_answers_503_while_the_database_is_down(tmp_path, monkeypatch):
    """A database that does not answer is a 503 with Retry-After, JSON under /api."""
    from app import create_app
    from tests.helpers import free_port

    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    client = create_app({"TESTING": True, "SKIP_MIGRATIONS": True}).test_client()
    resp = client.get("/api/tasks")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert resp.json == {"errors": [{"loc": [], "msg": "the database is unavailable; try again in a few seconds"}]}
    page = client.get("/")
    assert page.status_code == 503 and "database is unavailable" in page.get_data(as_text=True)


@pytest.mark.unit
def test_the_final_write_waits_for_the_database(monkeypatch):
    """The job's result is written again with back-off while the database is unreachable."""
    from sqlalchemy.exc import OperationalError

    from workers import experiment_job

    monkeypatch.setattr("tenacity.nap.time.sleep", lambda _s: None)
    outcomes = [OperationalError("UPDATE", {}, Exception("server closed the connection")), None]

    def write():
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return 7

    assert experiment_job.persistently(write) == 7 and outcomes == []
