"""The New task page.

- GET  /tasks/new[?clone=<id>]  the form, empty or filled from a stored task
- POST /tasks/new               validate with `parse_task`; store only a valid task, else
                                show every error beside its field (CSRF token required)

The page's script fills the form from a pasted file and shows a preview through the API
(app/web/api/drafts.py: /api/tasks/parse and /api/tasks/preview).
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for

from app.store.db import session_scope
from app.web.lookup import get_or_404
from app.store.models import Task
from app.domain.taskspec import TaskSpecError, format_loc, parse_task
from app.web.auth import may_write
from app.web.inputs import MAX_ID
from app.web.forms import (
    FIELD_PATHS,
    SLO_KEYS,
    SLO_PATHS,
    NewTaskForm,
    form_to_task,
    param_rows,
    task_to_form,
)

bp = Blueprint("submit", __name__)

MIN_ROWS = 3  # empty parameter rows shown without JavaScript


# -- errors -> fields ------------------------------------------------------------------------


def _field_for(loc: list[Any]) -> tuple[str | None, list[Any]]:
    """The form field an error path belongs to, and the rest of the path."""
    for key in SLO_KEYS:
        path = list(SLO_PATHS[key])
        if loc[: len(path)] == path:
            return f"slo_{key}", loc[len(path):]
    best, best_len = None, 0
    for field, path in FIELD_PATHS.items():
        p = list(path)
        if loc[: len(p)] == p and len(p) > best_len:
            best, best_len = field, len(p)
    if best is None and loc[:1] == ["model"]:
        return "model", loc[1:]
    if best is None and loc[:1] == ["sim"]:
        return None, loc
    return best, loc[best_len:]


def _message(rest: list[Any], msg: str) -> str:
    if not rest:
        return msg
    if isinstance(rest[0], int):
        where = f"item {rest[0] + 1}" + (f" {format_loc(rest[1:])}" if rest[1:] else "")
    else:
        where = format_loc(rest)
    return f"{where}: {msg}"


def map_errors(errors: list[dict[str, Any]], rows: list[dict[str, str]]) -> tuple[dict[str, list[str]], dict[int, list[str]], list[str]]:
    """Split errors into (per field, per parameter row index, summary)."""
    fields: dict[str, list[str]] = {}
    row_errors: dict[int, list[str]] = {}
    summary: list[str] = []
    names = {row["name"]: i for i, row in reversed(list(enumerate(rows))) if row.get("name")}
    for err in errors:
        loc, msg = list(err.get("loc") or []), str(err.get("msg", ""))
        if loc[:2] == ["form", "params"] and len(loc) > 2 and isinstance(loc[2], int):
            row_errors.setdefault(loc[2], []).append(msg)
            continue
        if loc[:1] == ["form"] and len(loc) > 1:
            fields.setdefault(str(loc[1]), []).append(msg)
            continue
        if loc[:1] == ["parameters"] and len(loc) > 1 and loc[1] in names:
            row_errors.setdefault(names[loc[1]], []).append(_message(loc[2:], msg))
            continue
        field, rest = _field_for(loc)
        if field is not None:
            fields.setdefault(field, []).append(_message(rest, msg))
        else:
            summary.append(f"{format_loc(loc) or 'task'}: {msg}")
    return fields, row_errors, summary


# -- pages -----------------------------------------------------------------------------------


def _padded(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    blank = {"name": "", "kind": "values", "values": "", "low": "", "high": "", "step": "", "log": ""}
    return rows + [dict(blank) for _ in range(max(MIN_ROWS - len(rows), 1 if rows else 0))]


def _render(form: NewTaskForm, rows: list[dict[str, str]], *, field_errors=None, row_errors=None, summary=None,
            status: int = 200, clone_of: int | None = None):
    return render_template(
        "new_task.html", form=form, rows=_padded(rows), field_errors=field_errors or {},
        row_errors=row_errors or {}, summary=summary or [], clone_of=clone_of,
        may_submit=may_write(),
    ), status


@bp.get("/tasks/new")
def new_task():
    clone = request.args.get("clone", type=int)
    if request.args.get("clone") is not None and (clone is None or not 0 < clone <= MAX_ID):
        abort(404)
    if clone is None:
        return _render(NewTaskForm(formdata=None), [])
    with session_scope(readonly=True) as s:
        spec = dict(get_or_404(s, Task, clone).spec or {})
    data, rows, extra = task_to_form(spec)
    if extra:
        data["extra_json"] = json.dumps(extra, indent=2)
    form = NewTaskForm(formdata=None, data=data)
    return _render(form, rows, clone_of=clone)


@bp.post("/tasks/new")
def create():
    if not may_write():
        abort(403)
    from app.task_service import create_task

    form = NewTaskForm()  # CSRFProtect already checked the token before this view
    rows = param_rows(request.form)
    problems: list[dict[str, Any]] = []
    task = form_to_task(request.form, problems)
    errors = list(problems)
    spec = None
    try:
        spec = parse_task(task)
    except TaskSpecError as exc:
        errors += exc.errors
    if spec is not None and not errors:
        try:
            task_id = create_task(spec)
        except TaskSpecError as exc:  # checks against this deployment (time limits)
            errors += exc.errors
        else:
            return redirect(url_for("live.task_page", task_id=task_id))
    shown_rows = [r for r in rows if any(r.get(k) for k in ("name", "values", "low", "high", "step"))]
    # Row indexes of errors refer to the submitted rows; re-index onto the rows shown.
    index_map = {id(r): i for i, r in enumerate(shown_rows)}
    field_errors, row_errors_submitted, summary = map_errors(errors, rows)
    row_errors = {index_map[id(rows[i])]: msgs for i, msgs in row_errors_submitted.items()
                  if i < len(rows) and id(rows[i]) in index_map}
    return _render(form, shown_rows, field_errors=field_errors, row_errors=row_errors, summary=summary, status=200)


