"""/api/tasks: submit, list, read, act on and export tasks; the live page's feeds."""
from __future__ import annotations

from flask import jsonify, request

from app.domain.taskspec import TaskSpecError, parse_task
from app.exports import export_document
from app.serializers import experiment_dict, list_tasks, task_dict
from app.store.db import session_scope
from app.store.models import Task
from app.task_service import cancel_task, create_task, delete_task, retry_failed, update_task
from app.web.api import bp
from app.web.auth import api_write
from app.web.charts import task_charts
from app.web.errors import json_error
from app.web.live import live_dict, page_args
from app.web.lookup import get_or_404


@bp.post("/tasks")
@api_write
def submit():
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return json_error(422, "the body must be a JSON object (a task file)", ["body"])
    try:
        task_id = create_task(parse_task(data))
    except TaskSpecError as exc:
        return jsonify({"errors": exc.errors}), 422
    with session_scope() as session:
        return jsonify(task_dict(session, session.get(Task, task_id))), 201


@bp.get("/tasks")
def tasks():
    with session_scope(readonly=True) as session:
        return jsonify({"tasks": list_tasks(session)})


@bp.get("/tasks/<int:task_id>")
def task(task_id: int):
    with session_scope(readonly=True) as session:
        return jsonify(task_dict(session, get_or_404(session, Task, task_id), experiments=False))


@bp.get("/tasks/<int:task_id>/experiments")
def experiments(task_id: int):
    with_metrics = request.args.get("metrics") in ("1", "true")
    with session_scope(readonly=True) as session:
        t = get_or_404(session, Task, task_id)
        return jsonify({"experiments": [experiment_dict(e, metrics=with_metrics) for e in t.experiments]})


@bp.patch("/tasks/<int:task_id>")
@api_write
def update(task_id: int):
    """Body: {"max_parallel_experiments": N, "priority": P} (either or both)."""
    data = request.get_json(silent=True)
    allowed = {"max_parallel_experiments", "priority"}
    if not isinstance(data, dict) or not data or set(data) - allowed:
        return json_error(422, f"the body must be a JSON object with {' and/or '.join(sorted(allowed))}", ["body"])
    try:
        return jsonify(update_task(task_id, **data))
    except TaskSpecError as exc:
        return jsonify({"errors": exc.errors}), 422


@bp.post("/tasks/<int:task_id>/cancel")
@api_write
def cancel(task_id: int):
    return jsonify({"id": task_id, "status": cancel_task(task_id)})


@bp.post("/tasks/<int:task_id>/retry")
@api_write
def retry(task_id: int):
    n = retry_failed(task_id)
    with session_scope(readonly=True) as s:
        status = s.get(Task, task_id).status
    return jsonify({"id": task_id, "status": status, "retried": n})


@bp.delete("/tasks/<int:task_id>")
@api_write
def delete(task_id: int):
    delete_task(task_id)
    return jsonify({"id": task_id, "deleted": True})


@bp.get("/tasks/<int:task_id>/export")
def export(task_id: int):
    with session_scope(readonly=True) as s:
        return jsonify(export_document(s, get_or_404(s, Task, task_id)))


@bp.get("/tasks/<int:task_id>/live")
def live(task_id: int):
    """What the live page polls: the summary and one page of experiments."""
    page, per_page, states, newest_first = page_args()
    with session_scope(readonly=True) as session:
        resp = jsonify(live_dict(session, get_or_404(session, Task, task_id), page, per_page, states, newest_first))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/tasks/<int:task_id>/charts")
def charts(task_id: int):
    with session_scope(readonly=True) as session:
        resp = jsonify(task_charts(session, get_or_404(session, Task, task_id)))
    resp.headers["Cache-Control"] = "no-store"
    return resp
