"""Task actions (retry failed experiments, delete, export JSON/CSV) and the reader/user roles,
through the service functions, the coordinator and Flask's test client on a real SQLite
store (submitting and retrying enqueue the coordinator on the in-memory broker)."""
from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import select

from app.coordinator import coordinate
from app.store.db import session_scope
from app.store.models import Attempt, Experiment, Gpu, GpuAllocation, Task
from app.task_service import Conflict, NotFound, delete_task, retry_failed
from tests.helpers import (USER, VIEWER, bearer, build_app, csrf_from, experiments, login, mixed_task, run_attempt, submit,
                           task_status)

pytestmark = pytest.mark.unit

# ---- helpers ----------------------------------------------------------------------------


def level(concurrency: int, ttft: float, tput: float) -> dict:
    return {"concurrency": concurrency, "completed": 6, "errors": 0, "mean_ttft_ms": ttft, "p99_ttft_ms": ttft * 2,
            "mean_tpot_ms": 5.0, "output_throughput": tput, "output_throughput_per_gpu": tput}


def metrics(tput: float) -> dict:
    return {"scenarios": [{"scenario": "D(64,16)", "levels": [level(1, 10.0, tput / 2), level(2, 20.0, tput)]}],
            "score": {"objective": tput, "slo_ok": True, "penalty": 0.0, "violations": []}, "simulated": True}


def finished_task(states=("succeeded", "failed", "timed_out", "succeeded")) -> int:
    """A task of len(states) experiments, all ended in the given states, coordinated to its end."""
    configs = [{"tp-size": 1, "max-running-requests": 16 * (i + 1)} for i in range(len(states))]
    task_id = submit(mixed_task(configs, parallel=len(states)))
    sent = coordinate(task_id)
    mine = {e.id for e in experiments(task_id)}  # the global scheduler may also place other tasks' work
    dispatches = sorted((d for d in sent if d.experiment_id in mine), key=lambda d: d.experiment_id)
    assert len(dispatches) == len(states)
    for i, (d, state) in enumerate(zip(dispatches, states)):
        if state == "succeeded":
            run_attempt(d, state, objective=100.0 + i, slo_ok=True, metrics=metrics(100.0 + i))
        else:
            run_attempt(d, state, error=f"{state} on purpose", metrics={"partial": True})
    coordinate(task_id)
    assert task_status(task_id) in ("completed", "failed")
    return task_id


# ---- retry ------------------------------------------------------------------------------


def test_retry_resets_only_failed_and_timed_out_and_the_coordinator_runs_them_again(pool):
    task_id = finished_task()
    assert task_status(task_id) == "completed"
    before = {e.seq: e for e in experiments(task_id)}

    assert retry_failed(task_id) == 2
    after = {e.seq: e for e in experiments(task_id)}
    assert [after[s].state for s in (1, 2, 3, 4)] == ["succeeded", "pending", "pending", "succeeded"]
    for seq in (2, 3):
        e = after[seq]
        assert (e.error, e.objective, e.metrics, e.finished_at, e.gpus, e.group) == (None, None, None, None, [], None)
        assert e.attempt == 1 and e.params == before[seq].params  # same row, history kept
    for seq in (1, 4):  # successes untouched
        assert after[seq].objective == before[seq].objective and after[seq].metrics == before[seq].metrics
    with session_scope() as s:
        task = s.get(Task, task_id)
        assert task.status == "running" and task.finished_at is None and task.error is None
        assert [a.state for a in s.execute(select(Attempt).where(Attempt.experiment_id == after[2].id)).scalars()] == [
            "failed"]

    # The coordinator dispatches exactly the retried experiments, as their second attempt,
    # and creates nothing new: they are the same rows, so max_iterations is not exceeded.
    dispatches = coordinate(task_id)
    assert sorted((d.experiment_id, d.attempt) for d in dispatches) == sorted((after[s].id, 2) for s in (2, 3))
    assert len(experiments(task_id)) == 4
    with session_scope() as s:
        numbers = s.execute(
            select(Attempt.number, Attempt.state).where(Attempt.experiment_id == after[3].id).order_by(Attempt.number)
        ).all()
        assert [tuple(n) for n in numbers] == [(1, "timed_out"), (2, "queued")]
    for d in dispatches:
        run_attempt(d, "succeeded", objective=50.0, slo_ok=True, metrics=metrics(50.0))
    assert coordinate(task_id) == []
    assert task_status(task_id) == "completed"
    assert [e.state for e in experiments(task_id)] == ["succeeded"] * 4
    with session_scope() as s:
        assert s.execute(select(Gpu).where(Gpu.held_by.is_not(None))).first() is None


def test_retry_brings_a_failed_task_back_and_refuses_what_it_should(pool):
    task_id = finished_task(("failed",))
    assert task_status(task_id) == "failed"
    assert retry_failed(task_id) == 1 and task_status(task_id) == "running"
    with pytest.raises(Conflict):  # nothing failed any more
        retry_failed(task_id)
    with pytest.raises(NotFound):
        retry_failed(9999)
    other = finished_task(("failed",))
    with session_scope() as s:
        s.get(Task, other).status = "cancelled"
    with pytest.raises(Conflict, match="cancelled"):
        retry_failed(other)


def test_a_retried_experiment_forgets_why_it_failed(pool):
    """Back to pending means back to pending: a retried experiment that failed at start-up
    (KV cache too small) must not wait with its old failure kind, or a strategy reading the
    history would steer away from the configuration it is about to run again."""
    from app.coordinator import _trial

    task_id = finished_task(("failed",))
    with session_scope() as s:
        exp = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalar_one()
        exp.failure_kind = "kv_cache"
        assert _trial(exp).infeasible
    assert retry_failed(task_id) == 1
    with session_scope() as s:
        exp = s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalar_one()
        assert (exp.state, exp.failure_kind, exp.slo_ok) == ("pending", None, None)
        assert not _trial(exp).infeasible


# ---- delete -----------------------------------------------------------------------------


def test_delete_refuses_a_running_task_and_removes_everything_of_a_finished_one(pool):
    running = submit(mixed_task([{"tp-size": 1}]))
    (d,) = coordinate(running)
    with pytest.raises(Conflict, match="running"):
        delete_task(running)

    done = finished_task()
    done_ids = [e.id for e in experiments(done)]
    with session_scope() as s:  # a GPU wrongly left pointing at one of its experiments
        s.execute(select(Gpu).where(Gpu.held_by.is_(None)).limit(1)).scalar_one().held_by = done_ids[0]
    delete_task(done)
    with session_scope() as s:
        assert s.get(Task, done) is None
        assert s.execute(select(Experiment).where(Experiment.id.in_(done_ids))).first() is None
        assert s.execute(select(Attempt).where(Attempt.experiment_id.in_(done_ids))).first() is None
        assert s.execute(select(GpuAllocation).where(GpuAllocation.experiment_id.in_(done_ids))).first() is None
        assert s.execute(select(Gpu).where(Gpu.held_by.in_(done_ids))).first() is None
        # The running task is untouched and still holds its GPU.
        assert s.get(Task, running).status == "running"
        assert s.execute(select(Gpu).where(Gpu.held_by == d.experiment_id)).first() is not None
    with pytest.raises(NotFound):
        delete_task(done)


# ---- export -----------------------------------------------------------------------------


def test_export_json_has_the_task_and_every_experiment_with_metrics(pool):
    task_id = finished_task()
    c = build_app().test_client()
    resp = c.get(f"/tasks/{task_id}/export.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert f'filename="task-{task_id}.json"' in resp.headers["Content-Disposition"]
    doc = json.loads(resp.data)
    assert doc["task"]["id"] == task_id and doc["task"]["status"] == "completed"
    assert doc["spec"]["task_name"] == "mixed-gpu-needs"
    assert doc["task"]["best"]["seq"] == 4  # the higher throughput
    assert [e["seq"] for e in doc["experiments"]] == [1, 2, 3, 4]
    assert all("metrics" in e and "attempt_history" in e for e in doc["experiments"])
    assert doc["experiments"][0]["metrics"]["scenarios"][0]["levels"][1]["output_throughput"] == 100.0
    assert doc["experiments"][1]["error"] == "failed on purpose"
    # The same document through the API.
    assert c.get(f"/api/tasks/{task_id}/export").json["experiments"] == doc["experiments"]
    assert c.get("/tasks/9999/export.json").status_code == 404
    assert c.get("/api/tasks/9999/export").status_code == 404


def test_export_csv_has_a_row_per_experiment_and_a_column_per_parameter(pool):
    task_id = finished_task()
    with session_scope() as s:
        s.execute(select(Experiment).where(Experiment.task_id == task_id, Experiment.seq == 3)).scalar_one().error = (
            '=HYPERLINK("http://x")')
    resp = build_app().test_client().get(f"/tasks/{task_id}/export.csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.data.decode())))
    assert len(rows) == 4
    header = list(rows[0])
    assert {"tp-size", "max-running-requests"} <= set(header)
    assert header[:3] == ["seq", "state", "attempts"] and header[-1] == "error"
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["state"] for r in rows] == ["succeeded", "failed", "timed_out", "succeeded"]
    assert [r["max-running-requests"] for r in rows] == ["16", "32", "48", "64"]
    first = rows[0]
    assert float(first["objective"]) == 100.0 and first["slo_ok"] == "true" and first["gpus"] == "h:0"
    # Key metrics come from the scored level (the highest concurrency, 2), not the first.
    assert float(first["output_throughput"]) == 100.0 and float(first["mean_ttft_ms"]) == 20.0
    assert first["scored_level"] == "concurrency 2"
    assert rows[1]["error"] == "failed on purpose" and rows[1]["objective"] == ""
    assert rows[2]["error"].startswith("'=")  # never a live formula in a spreadsheet


# ---- API ---------------------------------------------------------------------------------


def test_api_retry_and_delete(pool):
    c = build_app().test_client()
    task_id = finished_task()
    resp = c.post(f"/api/tasks/{task_id}/retry")
    assert resp.status_code == 200 and resp.json == {"id": task_id, "status": "running", "retried": 2}
    again = c.post(f"/api/tasks/{task_id}/retry")
    assert again.status_code == 409 and again.json["errors"][0]["loc"] == ["task_id"]
    conflict = c.delete(f"/api/tasks/{task_id}")
    assert conflict.status_code == 409 and "running" in conflict.json["errors"][0]["msg"]
    with session_scope() as s:
        s.get(Task, task_id).status = "failed"
    assert c.delete(f"/api/tasks/{task_id}").json == {"id": task_id, "deleted": True}
    for resp in (c.delete(f"/api/tasks/{task_id}"), c.post(f"/api/tasks/{task_id}/retry")):
        assert resp.status_code == 404 and resp.json["errors"][0]["msg"]
    assert c.get(f"/api/tasks/{task_id}").status_code == 404


# ---- pages and CSRF ---------------------------------------------------------------------


def test_task_list_shows_progress_and_actions_and_forms_need_csrf(pool):
    c = build_app().test_client()
    task_id = finished_task()
    page = c.get("/")
    assert page.status_code == 200
    html = page.data.decode()
    assert 'http-equiv="refresh"' in html and "autotuner submit FILE" in html
    assert f'href="/tasks/{task_id}"' in html and "simulated" in html and 'class="progress"' in html
    assert "2 done · 0 running · 0 queued · 2 failed" in html
    for needle in (f"/tasks/{task_id}/retry", f"/tasks/{task_id}/delete", f"/tasks/new?clone={task_id}",
                   f"/tasks/{task_id}/export.json", f"/tasks/{task_id}/export.csv", "data-confirm="):
        assert needle in html, needle
    assert "103" in html  # best objective so far

    # Without the CSRF token the forms are refused; with it they act and redirect.
    assert c.post(f"/tasks/{task_id}/retry").status_code == 400
    assert c.post(f"/tasks/{task_id}/delete").status_code == 400
    token = csrf_from(c, "/")
    resp = c.post(f"/tasks/{task_id}/retry", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/tasks/{task_id}")
    assert task_status(task_id) == "running"
    # A running task cannot be deleted: flashed, nothing removed.
    resp = c.post(f"/tasks/{task_id}/delete", data={"csrf_token": token}, follow_redirects=True)
    assert b"cancel it" in resp.data and task_status(task_id) == "running"
    with session_scope() as s:
        s.get(Task, task_id).status = "cancelled"
    resp = c.post(f"/tasks/{task_id}/delete", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/")
    assert c.get(f"/api/tasks/{task_id}").status_code == 404
    assert c.post("/tasks/9999/retry", data={"csrf_token": token}).status_code == 404


# ---- roles ------------------------------------------------------------------------------


@pytest.fixture
def secured(pool):
    return build_app({"AUTH_TOKEN": USER, "VIEWER_TOKEN": VIEWER})


def test_anonymous_cannot_read_when_a_viewer_token_is_set(secured):
    task_id = finished_task()
    c = secured.test_client()
    resp = c.get("/api/tasks")
    assert resp.status_code == 401 and resp.json["errors"][0]["loc"] == ["header", "Authorization"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/api/tasks", headers=bearer("wrong")).status_code == 401
    for url in ("/", f"/tasks/{task_id}", f"/tasks/{task_id}/export.csv", "/pool"):
        resp = c.get(url)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url
    assert c.post(f"/api/tasks/{task_id}/retry").status_code == 401
    assert c.delete(f"/api/tasks/{task_id}").status_code == 401
    assert c.get("/login").status_code == 200
    assert c.get("/static/style.css").status_code == 200
    assert login(c, "wrong").status_code == 200 and c.get("/").status_code == 302


def test_viewer_reads_but_cannot_change_anything(secured):
    task_id = finished_task()
    c = secured.test_client()
    h = bearer(VIEWER)
    assert c.get("/api/tasks", headers=h).status_code == 200
    assert c.get(f"/api/tasks/{task_id}/export", headers=h).status_code == 200
    assert c.get(f"/tasks/{task_id}/export.json", headers=h).status_code == 200
    for resp in (c.post(f"/api/tasks/{task_id}/retry", headers=h), c.delete(f"/api/tasks/{task_id}", headers=h),
                 c.post(f"/api/tasks/{task_id}/cancel", headers=h), c.post("/api/tasks", headers=h, json=mixed_task([{"tp-size": 1}]))):
        assert resp.status_code == 403 and resp.json["errors"][0]["msg"]
    # Pages: a viewer session reads, sees no buttons that change things, and is refused them.
    assert login(c, VIEWER).status_code == 302
    page = c.get("/")
    assert page.status_code == 200 and b"mixed-gpu-needs" in page.data
    assert b"/retry" not in page.data and b"/delete" not in page.data and b"Cancel</button>" not in page.data
    assert b"export.csv" in page.data
    assert c.get(f"/tasks/{task_id}/export.csv").status_code == 200
    token = csrf_from(c)
    assert c.post(f"/tasks/{task_id}/retry", data={"csrf_token": token}).status_code == 403
    assert c.post(f"/tasks/{task_id}/delete", data={"csrf_token": token}).status_code == 403
    assert task_status(task_id) == "completed"
    # Logging out (a POST with the CSRF token) ends reading too.
    assert c.post("/logout", data={"csrf_token": csrf_from(c)}).status_code == 302
    assert c.get("/").status_code == 302


def test_user_may_change_things_by_bearer_and_by_session(secured):
    task_id = finished_task()
    c = secured.test_client()
    assert c.post(f"/api/tasks/{task_id}/retry", headers=bearer(USER)).json["retried"] == 2
    assert c.get("/api/tasks", headers=bearer(USER)).status_code == 200
    with session_scope() as s:
        s.get(Task, task_id).status = "failed"
    assert login(c, USER).status_code == 302
    page = c.get("/")
    assert b"/delete" in page.data and b"data-confirm=" in page.data
    token = csrf_from(c)
    assert c.post(f"/tasks/{task_id}/delete", data={"csrf_token": token}).status_code == 302
    assert c.get(f"/api/tasks/{task_id}", headers=bearer(VIEWER)).status_code == 404


def test_session_never_holds_the_token_with_the_role_aware_login(pool):
    flask_app = build_app({"AUTH_TOKEN": USER, "VIEWER_TOKEN": VIEWER})
    c = flask_app.test_client()
    resp = c.post("/login?next=/pool", data={"token": VIEWER, "csrf_token": csrf_from(c)})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/pool")
    with c.session_transaction() as sess:
        assert VIEWER not in json.dumps(dict(sess))
    # An off-site `next` is not followed.
    resp = c.post("/login?next=//evil.example/x", data={"token": VIEWER, "csrf_token": csrf_from(c)})
    assert resp.headers["Location"] == "/"
    # Changing the viewer token logs the session out.
    flask_app.config["VIEWER_TOKEN"] = "rotated"
    assert c.get("/").status_code == 302


def test_viewer_token_comes_from_the_environment_and_nothing_is_needed_without_tokens(pool, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_VIEWER_TOKEN", VIEWER)
    c = build_app().test_client()
    assert c.get("/api/tasks").status_code == 401
    assert c.get("/api/tasks", headers=bearer(VIEWER)).status_code == 200
    # Only a viewer token: whoever may read may also change things (no user token to require).
    task_id = finished_task()
    assert c.post(f"/api/tasks/{task_id}/retry", headers=bearer(VIEWER)).status_code == 200
    assert c.post(f"/api/tasks/{task_id}/retry").status_code == 401
    monkeypatch.delenv("AUTOTUNER_VIEWER_TOKEN")
    open_app = build_app().test_client()
    assert open_app.get("/api/tasks").status_code == 200 and open_app.get("/").status_code == 200
