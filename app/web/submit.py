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
from flask_wtf import FlaskForm
from pydantic import BaseModel

from app.store.db import session_scope
from app.web.lookup import get_or_404
from app.store.models import Task
from app.domain.taskspec import TaskSpec, TaskSpecError, format_loc, parse_task
from app.task_service import create_task
from app.web.auth import may_write
from app.web.inputs import MAX_ID
from app.domain.taskspec.fields import form_fields
from app.web.forms import BLANK_ROW, form_class, form_to_task, param_rows, row_is_blank, sections, task_to_form

bp = Blueprint("submit", __name__)

MIN_ROWS = 3  # empty parameter rows shown without JavaScript


# -- errors -> fields ------------------------------------------------------------------------


def _field_for(loc: list[Any], model: type[BaseModel] = TaskSpec) -> tuple[str | None, list[Any]]:
    """The form field an error path belongs to, and the rest of the path: the field whose
    path is the longest prefix of it, else the one form field under it (a missing `model`
    section is the model field's error); None when the error belongs to no single field."""
    fields = form_fields(model)
    best = max((f for f in fields if list(f.path) == loc[:len(f.path)]), key=lambda f: len(f.path), default=None)
    if best is not None:
        return best.name, loc[len(best.path):]
    under = [f for f in fields if loc and list(f.path[:len(loc)]) == loc]
    if len(under) == 1:
        return under[0].name, []
    return None, loc


def _message(rest: list[Any], msg: str) -> str:
    if not rest:
        return msg
    if isinstance(rest[0], int):
        where = f"item {rest[0] + 1}" + (f" {format_loc(rest[1:])}" if rest[1:] else "")
    else:
        where = format_loc(rest)
    return f"{where}: {msg}"


def map_errors(errors: list[dict[str, Any]], rows: list[dict[str, str]], model: type[BaseModel] = TaskSpec
               ) -> tuple[dict[str, list[str]], dict[int, list[str]], list[str]]:
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
        field, rest = _field_for(loc, model)
        if field is not None:
            fields.setdefault(field, []).append(_message(rest, msg))
        else:
            summary.append(f"{format_loc(loc) or 'task'}: {msg}")
    return fields, row_errors, summary


# -- pages -----------------------------------------------------------------------------------


def _padded(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return rows + [dict(BLANK_ROW) for _ in range(max(MIN_ROWS - len(rows), 1 if rows else 0))]


def _render(form: FlaskForm, rows: list[dict[str, str]], *, field_errors=None, row_errors=None, summary=None,
            status: int = 200, clone_of: int | None = None):
    return render_template(
        "new_task.html", form=form, sections=sections(), blank_row=BLANK_ROW, rows=_padded(rows), field_errors=field_errors or {},
        row_errors=row_errors or {}, summary=summary or [], clone_of=clone_of,
        may_submit=may_write(),
    ), status


@bp.get("/tasks/new")
def new_task():
    clone = request.args.get("clone", type=int)
    if request.args.get("clone") is not None and (clone is None or not 0 < clone <= MAX_ID):
        abort(404)
    if clone is None:
        return _render(form_class()(formdata=None), [])
    with session_scope(readonly=True) as s:
        spec = dict(get_or_404(s, Task, clone).spec or {})
    data, rows, extra = task_to_form(spec)
    if extra:
        data["extra_json"] = json.dumps(extra, indent=2)
    form = form_class()(formdata=None, data=data)
    return _render(form, rows, clone_of=clone)


@bp.post("/tasks/new")
def create():
    if not may_write():
        abort(403)
    form = form_class()()  # CSRFProtect already checked the token before this view
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
    shown_rows = [r for r in rows if not row_is_blank(r)]
    # Row indexes of errors refer to the submitted rows; re-index onto the rows shown.
    index_map = {id(r): i for i, r in enumerate(shown_rows)}
    field_errors, row_errors_submitted, summary = map_errors(errors, rows)
    row_errors = {index_map[id(rows[i])]: msgs for i, msgs in row_errors_submitted.items()
                  if i < len(rows) and id(rows[i]) in index_map}
    return _render(form, shown_rows, field_errors=field_errors, row_errors=row_errors, summary=summary, status=200)


