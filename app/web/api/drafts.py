"""/api/tasks/parse and /api/tasks/preview: a task not yet stored, read back normalised or
counted (experiments, GPUs). They store nothing, so they are open like the read API."""
from __future__ import annotations

from typing import Any

from flask import jsonify, request

from app.domain.taskspec import TaskSpecError, parse_task
from app.domain.taskspec.documents import DocumentError, document_problems, load_text
from app.preview import preview_task
from app.web.api import bp
from app.web.forms import form_to_task, task_to_form


def _parse_error(msg: str):
    return jsonify({"errors": [{"loc": ["body"], "msg": msg}]}), 422


@bp.post("/tasks/parse")
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


@bp.post("/tasks/preview")
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
