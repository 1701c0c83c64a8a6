"""Server-rendered pages: task list, GPU pool, login (the live task and experiment pages
are in `live`, the task actions in `actions`)."""
from __future__ import annotations

import shlex

from flask import Blueprint, abort, flash, redirect, render_template, url_for

from app.store.db import session_scope
from app.domain.states import TASK_TERMINAL
from app.store.pool import clear_quarantine, parse_gpu_label
from app.serializers import list_tasks, pool_dict
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


@bp.get("/pool")
def pool():
    with session_scope(readonly=True) as s:
        return render_template("pool.html", pool=pool_dict(s))


@bp.post("/pool/gpus/<label>/clear-quarantine")
def clear_gpu_quarantine(label: str):
    """The pool page's button (a CSRF-protected form) for the API action of the same name."""
    if not may_write():
        abort(403)
    try:
        host, index = parse_gpu_label(label)
    except ValueError:
        abort(404)
    if not clear_quarantine(host, index):
        abort(404)
    flash(f"GPU {label}: quarantine cleared; it can be allocated again.")
    return redirect(url_for("pages.pool"))


bp.add_url_rule("/login", "login", login_view, methods=["GET", "POST"])
