"""Several tasks on one pool: priority decides which waiting experiment gets freed GPUs, and a
running task's parallelism and priority can be changed (store, API, CLI)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import main as cli
from app.coordinator import coordinate
from app.domain.taskspec import TaskSpecError
from app.store import lifecycle
from app.task_service import Conflict, update_task
from tests.helpers import build_app, experiments, mixed_task, run_attempt, submit

pytestmark = pytest.mark.unit


def whole_pool_task(n: int, priority: int = 0) -> dict:
    data = mixed_task([{"tp-size": 8}] * n, parallel=n)
    data["optimization"]["priority"] = priority
    return data


def test_freed_gpus_go_to_the_highest_priority_then_the_oldest(pool):
    low = submit(whole_pool_task(3))
    (running,) = coordinate(low)  # the 8-GPU pool holds one; the rest wait
    high = submit(whole_pool_task(1, priority=5))
    assert coordinate(high) == []
    (nxt,) = run_attempt(running, seconds=60)  # the end places what waits on the GPUs it frees
    assert nxt.experiment_id == experiments(high)[0].id  # younger, but higher priority
    # Raised while it runs, the first task's priority puts its waiting experiment first.
    assert update_task(low, priority=10) == {"id": low, "max_parallel_experiments": 3, "priority": 10}
    (after,) = run_attempt(nxt, seconds=60)
    assert after.experiment_id in {e.id for e in experiments(low)}


def test_parallelism_changes_while_a_task_runs_and_bad_values_change_nothing(pool):
    task_id = submit(mixed_task([{"tp-size": 1}] * 6, parallel=1))
    assert len(coordinate(task_id)) == 1
    update_task(task_id, max_parallel_experiments=4)
    assert len(coordinate(task_id)) == 3  # up to 4 at once now
    with pytest.raises(TaskSpecError) as exc:
        update_task(task_id, max_parallel_experiments=0, priority=99999)
    locs = {tuple(e["loc"]) for e in exc.value.errors}
    assert {("optimization", "max_parallel_experiments"), ("optimization", "priority")} <= locs
    client = build_app().test_client()
    assert client.get(f"/api/tasks/{task_id}").json["max_parallel_experiments"] == 4
    resp = client.patch(f"/api/tasks/{task_id}", json={"max_parallel_experiments": 2, "priority": 3})
    assert resp.status_code == 200 and resp.json == {"id": task_id, "max_parallel_experiments": 2, "priority": 3}
    assert client.patch(f"/api/tasks/{task_id}", json={"colour": "red"}).status_code == 422
    assert client.patch(f"/api/tasks/{task_id}", json={"priority": 1.5}).status_code == 422
    assert client.patch("/api/tasks/999", json={"priority": 1}).status_code == 404
    out = CliRunner().invoke(cli, ["set", str(task_id), "--max-parallel", "3"])
    assert out.exit_code == 0 and out.output == f"task {task_id}: max_parallel_experiments 3, priority 3\n"
    bad = CliRunner().invoke(cli, ["set", str(task_id), "--priority", "5000"])
    assert bad.exit_code != 0 and "optimization.priority" in bad.output


def test_a_finished_task_cannot_be_changed(pool):
    from app.task_service import cancel_task

    task_id = submit(mixed_task([{"tp-size": 1}]))
    cancel_task(task_id)
    coordinate(task_id)
    with pytest.raises(Conflict):
        update_task(task_id, priority=1)


def test_the_task_page_form_changes_parallelism_and_priority(pool):
    task_id = submit(mixed_task([{"tp-size": 1}] * 4, parallel=1))
    coordinate(task_id)
    client = build_app({"WTF_CSRF_ENABLED": False}).test_client()
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert 'id="settings-form"' in page and "priority 0" in page
    resp = client.post(f"/tasks/{task_id}/settings", data={"max_parallel_experiments": "2", "priority": "7"},
                       follow_redirects=True)
    text = resp.get_data(as_text=True)
    assert f"Task {task_id}: 2 in parallel, priority 7." in text and "priority 7" in text
    resp = client.post(f"/tasks/{task_id}/settings", data={"priority": "a lot"}, follow_redirects=True)
    assert "priority: &#39;a lot&#39; is not a whole number" in resp.get_data(as_text=True)


def test_tasks_of_equal_priority_share_the_pool_by_gpu_seconds(pool):
    """On 8 GPUs, task A (submitted first) runs 8-GPU experiments, task B 1-GPU ones, same
    priority and expected length. Served by age, A's queued experiments would go first each
    time and take most of the pool; served by fair-share tag, the two get about the same
    GPU-seconds while both wait."""
    big = submit(mixed_task([{"tp-size": 8}] * 12, parallel=8))
    small = submit(mixed_task([{"tp-size": 1}] * 48, parallel=8))
    used = {big: 0, small: 0}
    placed_by_ends: list = []
    for _ in range(8):
        dispatches = placed_by_ends + coordinate(big) + coordinate(small)
        for d in dispatches:
            exp = next(e for t in (big, small) for e in experiments(t) if e.id == d.experiment_id)
            used[exp.task_id] += exp.gpus_needed  # each runs one unit of time
        placed_by_ends = [placed for d in dispatches for placed in run_attempt(d, seconds=60)]
    share = used[small] / (used[big] + used[small])
    assert 0.4 <= share <= 0.6, used


def test_a_task_learns_its_experiments_length_and_a_failed_update_loses_no_result(pool, monkeypatch):
    """Each succeeded experiment's length goes into its task's moving average (the scheduler's
    expected length); if that update fails, the result is still stored and reported once."""
    from sqlalchemy.exc import OperationalError

    from app.store.db import session_scope
    from app.store.models import Task

    task = submit(mixed_task([{"tp-size": 1}] * 3, parallel=3))
    first, second, third = coordinate(task)

    def expected() -> float:
        with session_scope() as s:
            return s.get(Task, task).expected_experiment_s

    run_attempt(first, seconds=100)
    assert expected() == pytest.approx(100, abs=1)
    run_attempt(second, seconds=200)
    assert expected() == pytest.approx(0.7 * 100 + 0.3 * 200, abs=1)

    def down(*_args):
        raise OperationalError("UPDATE tasks", {}, Exception("server closed the connection"))

    monkeypatch.setattr(lifecycle, "_learn_length", down)
    run_attempt(third, seconds=300)  # the result counts; the estimate keeps its last value
    assert expected() == pytest.approx(130, abs=1)
    assert [e.state for e in experiments(task)] == ["succeeded"] * 3
