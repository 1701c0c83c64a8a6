"""The task page's actions as CSRF-protected forms (cancel, retry, delete), the downloads
(JSON and CSV, built by app/exports.py), and log out. The API has the same actions under
/api (app/web/api/tasks.py)."""
from __future__ import annotations

import json

from flask import Blueprint, Response, abort, flash, redirect, request, url_for

from app.exports import export_csv, export_document
from app.store.db import session_scope
from app.store.models import Task
from app.domain.taskspec import TaskSpecError
from app.task_service import Conflict, cancel_task, delete_task, retry_failed, update_task
from app.web import auth
from app.web.auth import may_write
from app.web.lookup import get_or_404

bp = Blueprint("actions", __name__)

def _download(body: str, mimetype: str, filename: str) -> Response:
    resp = Response(body, mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---- pages -------------------------------------------------------------------------------


def _page_action(task_id: int, action, done: str, after=None):
    """Run a task action for a page form: 403 without write permission, 404 for an
    unknown task (raised through), a flash message either way, then back to the task (or
    `after`)."""
    if not may_write():
        abort(403)
    try:
        flash(done.format(task_id=task_id, result=action(task_id)))
    except Conflict as exc:
        flash(str(exc))
        after = None
    return redirect(after or url_for("live.task_page", task_id=task_id))


@bp.post("/tasks/<int:task_id>/cancel")
def cancel(task_id: int):
    return _page_action(task_id, cancel_task, "Task {task_id} is being cancelled.")


@bp.post("/tasks/<int:task_id>/settings")
def settings(task_id: int):
    """The task page's parallelism and priority form (the API's PATCH /api/tasks/<id>)."""
    values = {}
    for name in ("max_parallel_experiments", "priority"):
        raw = request.form.get(name, "").strip()
        if raw:
            try:
                values[name] = int(raw)
            except ValueError:
                flash(f"{name.replace('_', ' ')}: {raw!r} is not a whole number")
                return redirect(url_for("live.task_page", task_id=task_id))

    def change(tid: int) -> str:
        try:
            result = update_task(tid, **values)
        except TaskSpecError as exc:
            return "; ".join(e["msg"] for e in exc.errors)
        return f"{result['max_parallel_experiments']} in parallel, priority {result['priority']}"

    return _page_action(task_id, change, "Task {task_id}: {result}.")


@bp.post("/tasks/<int:task_id>/retry")
def retry(task_id: int):
    return _page_action(task_id, retry_failed, "Task {task_id}: {result} experiment(s) will run again.")


@bp.post("/tasks/<int:task_id>/delete")
def delete(task_id: int):
    return _page_action(task_id, delete_task, "Task {task_id} deleted.", after=url_for("pages.index"))


@bp.get("/tasks/<int:task_id>/export.json")
def export_json_page(task_id: int):
    with session_scope(readonly=True) as s:
        task = get_or_404(s, Task, task_id)
        body = json.dumps(export_document(s, task), indent=2, default=str)
    return _download(body + "\n", "application/json", f"task-{task_id}.json")


@bp.get("/tasks/<int:task_id>/export.csv")
def export_csv_page(task_id: int):
    with session_scope(readonly=True) as s:
        body = export_csv(get_or_404(s, Task, task_id))
    return _download(body, "text/csv", f"task-{task_id}-experiments.csv")


@bp.post("/logout")
def logout():
    """POST only (with the form's CSRF token): a link or image elsewhere cannot log a user out."""
    return auth.logout()


