"""Task actions: retry failed experiments, delete, export (JSON and CSV), log out.

Two blueprints: `actions` (pages: CSRF-protected forms and downloads) and `actions_api`
(JSON under /api, bearer token; exempt it from CSRF like the `api` blueprint).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from flask import Blueprint, Response, abort, flash, jsonify, redirect, url_for

from app.store.db import session_scope
from app.web.errors import json_error as _error
from app.web.errors import task_errors
from app.store.models import Task, utcnow
from app.domain.objectives import scored_level
from app.serializers import experiment_dict, iso, task_dict
from app.task_service import Conflict, NotFound, cancel_task, delete_task, retry_failed
from app.web import auth
from app.web.auth import api_write, may_write

bp = Blueprint("actions", __name__)
api_bp = Blueprint("actions_api", __name__, url_prefix="/api")

EXPORT_FORMAT = "autotuner-task-export/1"
# Figures of the scored load level written to the CSV, per traffic scenario.
CSV_METRICS = (
    "completed", "errors", "request_throughput", "output_throughput", "output_throughput_per_gpu",
    "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "p99_e2el_ms",
    "goodput",
)
CSV_FIXED = ("seq", "state", "attempts", "gpus", "worker", "started_at", "finished_at", "objective", "slo_ok",
             "scored_level", "error")


def export_document(session, task: Task) -> dict[str, Any]:
    """The task (its spec as stored and its summary) and every experiment with metrics."""
    return {
        "format": EXPORT_FORMAT,
        "exported_at": iso(utcnow()),
        "spec": task.spec,
        "task": task_dict(session, task, experiments=False),
        "experiments": [experiment_dict(e, metrics=True) for e in task.experiments],
    }


def _param_names(task: Task) -> list[str]:
    """Parameter columns: the spec's parameters in order, then any other key an experiment has."""
    names = list(task.parsed_spec.search_space)
    for exp in task.experiments:
        names += [k for k in exp.params or {} if k not in names]
    return names


def _scored(exp_metrics: dict[str, Any] | None, at: float | None) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for scenario in (exp_metrics or {}).get("scenarios") or []:
        levels = scenario.get("levels") or []
        if levels:
            out.append((str(scenario.get("scenario")), scored_level(levels, at)))
    return out


def _level_label(level: dict[str, Any]) -> str:
    if level.get("request_rate"):
        return f"{level['request_rate']:g} req/s"
    if level.get("concurrency") is not None:
        return f"concurrency {level['concurrency']}"
    return ""


def export_csv(task: Task) -> str:
    """One row per experiment; each parameter its own column; key metrics at the scored level."""
    at = task.parsed_spec.optimization.objective_level
    params = _param_names(task)
    param_cols = [f"param:{p}" if p in CSV_FIXED else p for p in params]
    scenarios: list[str] = []
    for exp in task.experiments:
        scenarios += [name for name, _ in _scored(exp.metrics, at) if name not in scenarios]
    prefix = (lambda s: f"{s} ") if len(scenarios) > 1 else (lambda s: "")
    metric_cols = [(s, m, f"{prefix(s)}{m}") for s in scenarios for m in CSV_METRICS]
    header = ["seq", "state", "attempts", *param_cols, "gpus", "worker", "started_at", "finished_at", "objective",
              "slo_ok", "scored_level", *(c for _, _, c in metric_cols), "error"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for exp in task.experiments:
        scored = dict(_scored(exp.metrics, at))
        values = [exp.params.get(p, "") if exp.params else "" for p in params]
        levels = {_level_label(lv) for lv in scored.values()} - {""}
        row = [
            exp.seq, exp.state, exp.attempt, *(_cell(v) for v in values), " ".join(exp.gpus or []),
            _cell(exp.worker), iso(exp.started_at) or "", iso(exp.finished_at) or "", _cell(exp.objective),
            _cell(exp.slo_ok), ", ".join(sorted(levels)),
            *(_cell(scored.get(s, {}).get(m)) for s, m, _ in metric_cols),
            _cell(exp.error),
        ]
        writer.writerow(row)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
        except ValueError:
            return "'" + value  # a spreadsheet must not run an error message as a formula
    return value


def _load(session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        abort(404)
    return task


def _download(body: str, mimetype: str, filename: str) -> Response:
    resp = Response(body, mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---- pages -------------------------------------------------------------------------------


def _page_action(task_id: int, action, done: str, after=None):
    """Run a task action for a page form: 403 without write permission, 404 for an
    unknown task, a flash message either way, then back to the task (or `after`)."""
    if not may_write():
        abort(403)
    try:
        flash(done.format(task_id=task_id, result=action(task_id)))
    except NotFound:
        abort(404)
    except Conflict as exc:
        flash(str(exc))
        after = None
    return redirect(after or url_for("live.task_page", task_id=task_id))


@bp.post("/tasks/<int:task_id>/cancel")
def cancel(task_id: int):
    return _page_action(task_id, cancel_task, "Task {task_id} is being cancelled.")


@bp.post("/tasks/<int:task_id>/retry")
def retry(task_id: int):
    return _page_action(task_id, retry_failed, "Task {task_id}: {result} experiment(s) will run again.")


@bp.post("/tasks/<int:task_id>/delete")
def delete(task_id: int):
    return _page_action(task_id, delete_task, "Task {task_id} deleted.", after=url_for("pages.index"))


@bp.get("/tasks/<int:task_id>/export.json")
def export_json_page(task_id: int):
    with session_scope(readonly=True) as s:
        task = _load(s, task_id)
        body = json.dumps(export_document(s, task), indent=2, default=str)
    return _download(body + "\n", "application/json", f"task-{task_id}.json")


@bp.get("/tasks/<int:task_id>/export.csv")
def export_csv_page(task_id: int):
    with session_scope(readonly=True) as s:
        body = export_csv(_load(s, task_id))
    return _download(body, "text/csv", f"task-{task_id}-experiments.csv")


@bp.post("/logout")
def logout():
    """POST only (with the form's CSRF token): a link or image elsewhere cannot log a user out."""
    return auth.logout()


# ---- API ---------------------------------------------------------------------------------


@api_bp.post("/tasks/<int:task_id>/retry")
@api_write
@task_errors
def api_retry(task_id: int):
    n = retry_failed(task_id)
    with session_scope(readonly=True) as s:
        status = s.get(Task, task_id).status
    return jsonify({"id": task_id, "status": status, "retried": n})


@api_bp.delete("/tasks/<int:task_id>")
@api_write
@task_errors
def api_delete(task_id: int):
    delete_task(task_id)
    return jsonify({"id": task_id, "deleted": True})


@api_bp.get("/tasks/<int:task_id>/export")
def api_export(task_id: int):
    with session_scope(readonly=True) as s:
        task = s.get(Task, task_id)
        if task is None:
            return _error(404, f"task {task_id} not found", ["task_id"])
        return jsonify(export_document(s, task))
