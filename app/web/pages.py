"""Server-rendered pages: task list, task detail (refreshing while it runs), pool."""
from __future__ import annotations

import shlex

from flask import Blueprint, abort, flash, redirect, render_template, url_for

from app.db import session_scope
from app.models import TASK_TERMINAL, Experiment, Task
from app.reports import experiment_dict, list_tasks, pool_dict, task_dict
from app.task_service import Conflict, NotFound, cancel_task
from app.web.auth import login_view, may_write

bp = Blueprint("pages", __name__)


@bp.app_template_filter("shell")
def shell_join(argv: list[str]) -> str:
    return shlex.join(argv)


@bp.app_context_processor
def _globals():
    return {"can_write": may_write(), "terminal_states": TASK_TERMINAL}


@bp.get("/")
def index():
    with session_scope(readonly=True) as s:
        return render_template("tasks.html", tasks=list_tasks(s))


@bp.get("/tasks/<int:task_id>")
def task(task_id: int):
    with session_scope(readonly=True) as s:
        t = s.get(Task, task_id)
        if t is None:
            abort(404)
        return render_template("task.html", task=task_dict(s, t))


@bp.get("/experiments/<int:experiment_id>")
def experiment(experiment_id: int):
    with session_scope(readonly=True) as s:
        e = s.get(Experiment, experiment_id)
        if e is None:
            abort(404)
        return render_template("experiment.html", exp=experiment_dict(e, metrics=True), task_name=e.task.name)


@bp.post("/tasks/<int:task_id>/cancel")
def cancel(task_id: int):
    if not may_write():
        abort(403)
    try:
        cancel_task(task_id)
        flash(f"Task {task_id} is being cancelled.")
    except NotFound:
        abort(404)
    except Conflict as exc:
        flash(str(exc))
    return redirect(url_for("pages.task", task_id=task_id))


@bp.get("/pool")
def pool():
    with session_scope(readonly=True) as s:
        return render_template("pool.html", pool=pool_dict(s))


bp.add_url_rule("/login", "login", login_view, methods=["GET", "POST"])
