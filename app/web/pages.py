"""Server-rendered pages: task list, cancel, GPU pool, login (the live task and
experiment pages are in `live`)."""
from __future__ import annotations

import shlex

from flask import Blueprint, abort, flash, redirect, render_template, url_for

from app.db import session_scope
from app.models import TASK_TERMINAL
from app.reports import list_tasks, pool_dict
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
    return redirect(url_for("live.task_page", task_id=task_id))


@bp.get("/pool")
def pool():
    with session_scope(readonly=True) as s:
        return render_template("pool.html", pool=pool_dict(s))


bp.add_url_rule("/login", "login", login_view, methods=["GET", "POST"])
