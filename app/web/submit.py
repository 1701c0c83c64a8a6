"""The New task page (`submit` blueprint) and its two helper endpoints (`submit_api`).

- GET  /tasks/new[?clone=<id>]  the form, empty or filled from a stored task
- POST /tasks/new               validate with `parse_task`; store only a valid task, else
                                show every error beside its field (CSRF token required)
- POST /api/tasks/parse         a JSON or YAML task text -> the normalised task (or 422)
- POST /api/tasks/preview       a task dict -> number of experiments and GPUs per experiment

The two API routes store nothing, so they are open like the read API, and exempt from CSRF
like the rest of /api (app/web/csrf.py); `create_app` registers both blueprints.
"""
from __future__ import annotations

import itertools
import json
from typing import Any

from flask import Blueprint, abort, jsonify, redirect, render_template, request, url_for

from app.store.db import session_scope
from app.store.models import Task
from app.domain.taskspec import TaskSpecError, format_loc, parse_task
from app.domain.taskspec.documents import DocumentError, document_problems, load_text
from app.domain.taskspec.domains import Choice, IntRange
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
api_bp = Blueprint("submit_api", __name__, url_prefix="/api")

MAX_ENUMERATED = 10_000  # parameter sets looked at to find the GPU range
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
        task = s.get(Task, clone)
        if task is None:
            abort(404)
        spec = dict(task.spec or {})
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


# -- API: parse and preview ------------------------------------------------------------------


def _parse_error(msg: str):
    return jsonify({"errors": [{"loc": ["body"], "msg": msg}]}), 422


@api_bp.post("/tasks/parse")
def parse():
    """Body: a task file's text (JSON or YAML; raw, or as {"text": ...}) or a JSON task.
    Answer: the normalised task (`parse_task(...).to_dict()`), or 422 with the errors.

    With `?form=1` the answer is the form layout of the task as written, even when it is
    invalid: {"form": {field: value}, "rows": [parameter rows], "extra": {...},
    "errors": [...], "notes": [...]} (the page's "Fill the form" button uses this)."""
    data: Any = request.get_json(silent=True) if request.is_json else None
    if isinstance(data, dict) and set(data) == {"text"} and isinstance(data["text"], str):
        text: str | None = data["text"]
    elif data is None:
        text = request.get_data(as_text=True)
    else:
        text = None
    if text is not None:
        if not text.strip():
            return _parse_error("the task text is empty")
        try:
            data = load_text(text)  # YAML (a superset of JSON), without aliases, depth-limited
        except DocumentError as exc:
            return _parse_error(str(exc))
    problems = document_problems(data)
    if problems:  # before task_to_form copies it: nothing of an oversized document is processed
        return jsonify({"errors": problems}), 422
    errors: list[dict[str, Any]] = []
    notes: list[str] = []
    spec = None
    try:
        spec = parse_task(data)
        notes = list(spec.notes)
    except TaskSpecError as exc:
        errors = exc.errors
    if request.args.get("form") in ("1", "true"):
        if not isinstance(data, dict):
            return jsonify({"errors": errors}), 422
        form, rows, extra = task_to_form(data)
        return jsonify({"form": form, "rows": rows, "extra": extra, "errors": errors, "notes": notes})
    if spec is None:
        return jsonify({"errors": errors}), 422
    return jsonify(spec.to_dict())


def _gpu_range(spec) -> tuple[list[int], list[str]]:
    """Distinct GPU counts over the parameter sets the task can run. Bounded work: at most
    MAX_ENUMERATED values per axis and MAX_ENUMERATED combinations are looked at."""
    notes: list[str] = []
    if spec.optimization.strategy == "list":
        configs = spec.list_configs[:MAX_ENUMERATED]
        return sorted({spec.gpus_needed(c) for c in configs}) or [1], notes
    engine = spec.engine_spec
    relevant = set(engine.gpu_flags) | ({engine.dp_inside_tp} if engine.dp_inside_tp else set())
    axes: list[tuple[str, list[Any]]] = []
    for name, dom in spec.search_space.items():
        if name not in relevant:
            continue
        if isinstance(dom, (Choice, IntRange)):  # IntRange's values are a lazy range: slicing is free
            axes.append((name, dom.grid_values()[:MAX_ENUMERATED]))
    counts: set[int] = set()
    for i, combo in enumerate(itertools.product(*(values for _, values in axes))):
        if i >= MAX_ENUMERATED:
            notes.append(f"GPU range computed over the first {MAX_ENUMERATED:,} parameter sets")
            break
        counts.add(spec.gpus_needed(dict(zip((n for n, _ in axes), combo))))
    return sorted(counts) or [1], notes


def preview_task(data: Any) -> dict[str, Any]:
    """Experiments the task will run and GPUs each needs; errors instead when invalid."""
    from app.task_service import check_submittable

    out: dict[str, Any] = {"experiments": None, "gpus_per_experiment": None, "gpu_counts": None,
                           "grid_size": None, "notes": [], "errors": []}
    try:
        spec = parse_task(data)
        check_submittable(spec)
    except TaskSpecError as exc:
        out["errors"] = exc.errors
        return out
    strategy, limit = spec.optimization.strategy, int(spec.optimization.max_iterations)
    grid = spec.grid_size()
    out["grid_size"] = grid
    if strategy == "list":
        available = len(spec.list_configs)
        out["experiments"] = min(limit, available)
    elif grid is not None:
        out["experiments"] = min(limit, grid)
    else:
        out["experiments"] = limit
    notes = list(spec.notes)
    if strategy in ("grid_search", "random") and grid is not None and limit < grid:
        notes.append(f"the search space has {grid:,} parameter sets; {limit:,} of them will run")
    if grid is None and strategy in ("random", "bayesian"):
        notes.append("the search space is continuous; max_iterations decides how many experiments run")
    counts, gpu_notes = _gpu_range(spec)
    out["gpus_per_experiment"] = [counts[0], counts[-1]]
    out["gpu_counts"] = counts
    out["notes"] = notes + gpu_notes
    return out


@api_bp.post("/tasks/preview")
def preview():
    """Body: the task as JSON, or the New task form itself (form-encoded)."""
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify({"experiments": None, "gpus_per_experiment": None, "notes": [],
                            "errors": [{"loc": ["body"], "msg": "the body must be a JSON object (a task)"}]}), 422
        return jsonify(preview_task(data))
    problems: list[dict[str, Any]] = []
    data = form_to_task(request.form, problems)
    out = preview_task(data)
    out["errors"] = problems + out["errors"]
    return jsonify(out)
