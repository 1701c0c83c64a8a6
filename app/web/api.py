"""The JSON API. Errors have one shape: `{"errors": [{"loc": [...], "msg": "..."}]}`."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from app.store.db import session_scope
from app.store.models import Experiment, Task
from app.serializers import experiment_dict, list_tasks, pool_dict, task_dict
from app.task_service import cancel_task, create_task
from app.domain.taskspec import TaskSpecError, parse_task
from app.web.auth import api_write
from app.web.errors import json_error as error
from app.web.errors import task_errors
from app.web.openapi import openapi_document

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.post("/tasks")
@api_write
def submit():
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return error(422, "the body must be a JSON object (a task file)", ["body"])
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
        t = session.get(Task, task_id)
        if t is None:
            return error(404, f"task {task_id} not found", ["task_id"])
        return jsonify(task_dict(session, t, experiments=False))


@bp.get("/tasks/<int:task_id>/experiments")
def experiments(task_id: int):
    with_metrics = request.args.get("metrics") in ("1", "true")
    with session_scope(readonly=True) as session:
        t = session.get(Task, task_id)
        if t is None:
            return error(404, f"task {task_id} not found", ["task_id"])
        return jsonify({"experiments": [experiment_dict(e, metrics=with_metrics) for e in t.experiments]})


@bp.get("/experiments/<int:experiment_id>")
def experiment(experiment_id: int):
    with session_scope(readonly=True) as session:
        e = session.get(Experiment, experiment_id)
        if e is None:
            return error(404, f"experiment {experiment_id} not found", ["experiment_id"])
        return jsonify(experiment_dict(e, metrics=True))


@bp.post("/tasks/<int:task_id>/cancel")
@api_write
@task_errors
def cancel(task_id: int):
    return jsonify({"id": task_id, "status": cancel_task(task_id)})


@bp.get("/pool")
def pool():
    with session_scope(readonly=True) as session:
        return jsonify(pool_dict(session))


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
