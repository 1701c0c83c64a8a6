"""The New task form, built from the task model's form fields (app.domain.taskspec.fields),
and the pure conversions between the submitted form and a task dict.

`form_to_task(form_data)` builds the task dict that `parse_task` validates; it does not
validate anything itself: text that is not a number stays text, so `parse_task` reports it
at the field's own path and the page shows it beside that field. What cannot be put in the
dict at all (a parameter row without a name, invalid JSON in a JSON box) is reported through
the optional `problems` list with a `["form", ...]` path.

`task_to_form(task)` is the inverse (clone, fill from a file): scalar values, parameter
rows, and `extra`, every part of the task the form has no field for (kept in the
`extra_json` box so that nothing is lost on the way back).

Every function takes the model (`TaskSpec` by default): a field declared on it with an
`OnForm` marker is on the form, in both conversions and in the error mapping, with no
other edit.
"""
from __future__ import annotations

import copy
import json
import math
import re
from functools import lru_cache
from typing import Any, Mapping

from flask_wtf import FlaskForm
from pydantic import BaseModel
from wtforms import BooleanField, SelectField, StringField, TextAreaField

from app.domain.engines import SIMULATOR, builtin_engines, engines
from app.domain.objectives import OBJECTIVES
from app.domain.strategies import STRATEGIES
from app.domain.taskspec import TaskSpec
from app.domain.taskspec.documents import DocumentError, load_text
from app.domain.taskspec.fields import FormField, form_fields
from app.domain.taskspec.normalise import param_kind

try:  # WTForms >= 3.3 deprecates (value, label) tuples
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None  # type: ignore[assignment,misc]


def _choices(pairs: list[tuple[str, str]]) -> list[Any]:
    return [SelectChoice(v, label) for v, label in pairs] if SelectChoice is not None else list(pairs)


PARAM_FIELDS = ("param_name", "param_kind", "param_values", "param_low", "param_high", "param_step", "param_log")
ROW_VALUES = ("name", "values", "low", "high", "step")  # a row with none of these is blank
BLANK_ROW = {"name": "", "kind": "values", "values": "", "low": "", "high": "", "step": "", "log": ""}
TRUE_WORDS = frozenset({"y", "yes", "on", "true", "1"})  # a checked box or a chosen "log" scale
SECTIONS = {"general": "Task", "engine": "Model and engine", "optimization": "Optimization",
            "benchmark": "Benchmark", "slos": "SLOs (seconds, optional)"}


def hard_fail_name(field: FormField) -> str:
    """The check box of an SLO target field."""
    return f"{field.name}_hard_fail"


def choices_of(field: FormField, current: str | None = None) -> list[tuple[str, str]]:
    """(value, label) of a choice field: a registry's entries, or the values its type allows."""
    if field.choices == "strategies":
        return [(name, cls.label) for name, cls in STRATEGIES.items()]
    if field.choices == "objectives":
        return [(o.name, o.label) for o in OBJECTIVES.values()]
    if field.choices == "engines":
        return runtime_choices(current)
    return [(str(v), str(v)) for v in field.choices or ()]


def display(value: Any) -> str:
    """A model default as the form shows it: lists comma separated, 600.0 as 600."""
    if isinstance(value, list):
        return ", ".join(display(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


@lru_cache(maxsize=None)
def form_class(model: type[BaseModel] = TaskSpec) -> type[FlaskForm]:
    """The WTForms class of the New task page for `model`: one field per form field (an SLO
    target adds its hard-fail box), and the "Other settings" JSON box. Ids equal names;
    parameter rows are a repeated group read from the request by `param_rows`."""
    fields = form_fields(model)

    class NewTaskForm(FlaskForm):
        class Meta:
            csrf_field_name = "csrf_token"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for field in fields:  # registries that can change while the server runs (engines file)
                if field.kind == "choice":
                    self[field.name].choices = _choices(choices_of(field, self[field.name].data))

    for field in fields:
        if field.kind == "choice":
            setattr(NewTaskForm, field.name, SelectField(field.label, default=field.default))
        elif field.kind == "json":
            setattr(NewTaskForm, field.name, TextAreaField(field.label))
        else:
            setattr(NewTaskForm, field.name, StringField(field.label, default=display(field.default) or None))
        if field.kind == "target":
            setattr(NewTaskForm, hard_fail_name(field), BooleanField("hard fail"))
    NewTaskForm.extra_json = TextAreaField("Other settings (JSON merged into the task)")
    return NewTaskForm


def sections(model: type[BaseModel] = TaskSpec) -> dict[str, dict[str, Any]]:
    """The page's fieldsets in order, each with its legend and form fields."""
    out = {key: {"legend": legend, "fields": []} for key, legend in SECTIONS.items()}
    for field in form_fields(model):
        out.setdefault(field.section, {"legend": field.section.capitalize(), "fields": []})["fields"].append(field)
    return out


def runtime_choices(current: str | None = None) -> list[tuple[str, str]]:
    """The registry's engines (an operator's engines file included), the simulated engine, and
    the value a loaded file names if it is none of those (an OME runtime name), so the form
    shows what the file says."""
    try:
        known = engines()
    except ValueError:  # a broken engines file: submission reports it, the page still renders
        known = builtin_engines()
    pairs = [(name, spec.label) for name, spec in known.items()] + [(SIMULATOR.name, SIMULATOR.label)]
    if current and current not in {name for name, _ in pairs}:
        pairs.append((current, f"{current} (engine inferred from the parameters)"))
    return pairs


# -- reading the submitted form --------------------------------------------------------------


def _get(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return "" if value is None else str(value).strip()


def _getlist(data: Mapping[str, Any], key: str) -> list[str]:
    if hasattr(data, "getlist"):
        values = data.getlist(key)
    else:
        values = data.get(key, [])
        values = values if isinstance(values, (list, tuple)) else [values]
    return ["" if v is None else str(v).strip() for v in values]


def _checked(data: Mapping[str, Any], key: str) -> bool:
    return _get(data, key).lower() in TRUE_WORDS


_INT_RE = re.compile(r"^[+-]?\d+$")


def parse_number(text: str) -> Any:
    """"8" -> 8, "0.5" -> 0.5; anything else stays the text (validation reports it)."""
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def parse_value(text: str) -> Any:
    """A parameter value as typed: true/false, a number, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return parse_number(text)


def split_list(text: str) -> list[str]:
    """Comma separated, but commas inside parentheses belong to the item (D(100,100))."""
    items, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return [item for item in items if item]


def param_rows(form_data: Mapping[str, Any]) -> list[dict[str, str]]:
    """The parameter rows as submitted (one dict per row, blanks kept, order kept)."""
    columns = {f: _getlist(form_data, f) for f in PARAM_FIELDS}
    n = max((len(v) for v in columns.values()), default=0)
    rows = []
    for i in range(n):
        row = {f[len("param_"):]: (columns[f][i] if i < len(columns[f]) else "") for f in PARAM_FIELDS}
        row["kind"] = row["kind"] or "values"
        rows.append(row)
    return rows


def row_is_blank(row: Mapping[str, str]) -> bool:
    """A parameter row left empty: skipped on submission and not shown again."""
    return not any(row.get(k) for k in ROW_VALUES)


def row_to_domain(row: Mapping[str, str]) -> Any:
    """One parameter row -> the task file's definition of that parameter."""
    kind = row.get("kind") or "values"
    log = _checked(row, "log")
    if kind in ("int", "float"):
        domain: dict[str, Any] = {"type": kind}
        for key in ("low", "high") + (("step",) if kind == "int" else ()):
            if row.get(key):
                domain[key] = parse_number(row[key])
        if log:
            domain["log"] = True
        return domain
    return [parse_value(v) for v in split_list(row.get("values") or "")]


def _set(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        out = out.setdefault(key, {})
    out[path[-1]] = value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: `top` wins; dicts merge key by key."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _value(field: FormField, text: str, form_data: Mapping[str, Any], problems: list[dict[str, Any]]) -> Any:
    """The task value of one filled-in field (None, with a problem, when it cannot be read)."""
    if field.kind == "json":
        try:
            return load_text(text, as_json=True)
        except DocumentError as exc:
            problems.append({"loc": ["form", field.name], "msg": str(exc)})
            return None
    if field.kind == "list_text":
        return split_list(text)
    if field.kind == "list_number":
        return [parse_number(v) for v in split_list(text)]
    if field.kind == "number":
        return parse_number(text)
    if field.kind == "target":
        return {"threshold": parse_number(text), "hard_fail": _checked(form_data, hard_fail_name(field))}
    return text


def form_to_task(form_data: Mapping[str, Any], problems: list[dict[str, Any]] | None = None,
                 model: type[BaseModel] = TaskSpec) -> dict[str, Any]:
    """Build the task dict from the submitted form (a werkzeug MultiDict, or a plain dict
    whose param_* values are lists). Pure: no validation beyond what the dict cannot hold;
    those problems are appended to `problems` with paths under ["form", ...]."""
    problems = problems if problems is not None else []
    task: dict[str, Any] = {}
    extra_text = _get(form_data, "extra_json")
    extra: dict[str, Any] = {}
    if extra_text:
        try:
            extra = load_text(extra_text, as_json=True)
        except DocumentError as exc:
            problems.append({"loc": ["form", "extra_json"], "msg": str(exc)})
            extra = {}
        if not isinstance(extra, dict):
            problems.append({"loc": ["form", "extra_json"], "msg": "must be a JSON object"})
            extra = {}
    fields = form_fields(model)
    for field in fields:
        text = _get(form_data, field.name)
        if text:
            value = _value(field, text, form_data, problems)
            if value is not None:
                _set(task, field.path, value)
    parameters: dict[str, Any] = {}
    for i, row in enumerate(param_rows(form_data)):
        if row_is_blank(row):
            continue
        name = row["name"]
        if not name:
            problems.append({"loc": ["form", "params", i], "msg": "a parameter needs a name"})
            continue
        if name in parameters:
            problems.append({"loc": ["form", "params", i], "msg": f"parameter {name!r} is defined twice"})
            continue
        parameters[name] = row_to_domain(row)
    task["parameters"] = parameters
    task = _merge(extra, task)
    # An SLO target kept from the extra JSON whose threshold was cleared on the form is gone,
    # and so are the sections it leaves empty below the top level.
    for field in fields:
        if field.kind == "target":
            parents = [task]
            for key in field.path[:-1]:
                parent = parents[-1].get(key)
                if not isinstance(parent, dict):
                    break
                parents.append(parent)
            else:
                target = parents[-1].get(field.path[-1])
                if isinstance(target, dict) and "threshold" not in target:
                    del parents[-1][field.path[-1]]
                    for parent, key in reversed(list(zip(parents[1:-1], field.path[1:-1]))):
                        if not parent.get(key):
                            del parent[key]
    return task


# -- filling the form from a task ------------------------------------------------------------


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return repr(value)  # keep "1.0" a float
    return str(value)


def domain_to_row(name: str, raw: Any) -> dict[str, str]:
    row = dict(BLANK_ROW, name=name)
    if isinstance(raw, dict):
        kind = param_kind(raw.get("type", "choice" if "values" in raw else None))
        if kind in ("int", "float"):
            row["kind"] = kind
            for key in ("low", "high", "step"):
                if raw.get(key) is not None and not (key == "step" and kind == "float"):
                    row[key] = format_value(raw[key])
            row["log"] = "true" if raw.get("log") else ""
            return row
        raw = raw.get("values", [])
    values = raw if isinstance(raw, list) else [raw]
    row["values"] = ", ".join(format_value(v) for v in values)
    return row


def _pop(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path[:-1]:
        d = d.get(key) if isinstance(d, dict) else None  # type: ignore[assignment]
        if not isinstance(d, dict):
            return None
    return d.pop(path[-1], None) if isinstance(d, dict) else None


def _prune(d: Any) -> Any:
    """Drop the dicts left empty once the form's fields were taken out."""
    if isinstance(d, dict):
        out = {k: _prune(v) for k, v in d.items()}
        return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
    return d


def task_to_form(task: Mapping[str, Any], model: type[BaseModel] = TaskSpec
                 ) -> tuple[dict[str, Any], list[dict[str, str]], dict[str, Any]]:
    """A task dict -> (form field values, parameter rows, extra: the rest of the task)."""
    rest = copy.deepcopy(dict(task))
    data: dict[str, Any] = {}
    for field in form_fields(model):
        if field.kind == "target":
            value = _pop(rest, field.path + ("threshold",))
            if value is not None:
                data[field.name] = format_value(value)
                data[hard_fail_name(field)] = bool(_pop(rest, field.path + ("hard_fail",)))
            continue
        value = _pop(rest, field.path)
        if value is None:
            continue
        if field.kind == "json":
            data[field.name] = json.dumps(value)
        elif field.kind in ("list_text", "list_number"):
            data[field.name] = ", ".join(format_value(v) for v in (value if isinstance(value, list) else [value]))
        else:
            data[field.name] = format_value(value)
    params = rest.pop("parameters", None) or {}
    rows = [domain_to_row(str(name), raw) for name, raw in params.items()] if isinstance(params, dict) else []
    return data, rows, _prune(rest)
