"""The New task form: scalar fields (Flask-WTF, for CSRF and rendering) and the pure
conversions between the submitted form and a task dict.

`form_to_task(form_data)` builds the task dict that `parse_task` validates; it does not
validate anything itself: text that is not a number stays text, so `parse_task` reports it
at the field's own path and the page shows it beside that field. What cannot be put in the
dict at all (a parameter row without a name, invalid JSON in a JSON box) is reported through
the optional `problems` list with a `["form", ...]` path.

`task_to_form(task)` is the inverse (clone, fill from a file): scalar values, parameter
rows, and `extra`, every part of the task the form has no field for (kept in the
`extra_json` box so that nothing is lost on the way back).
"""
from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, Mapping

from flask_wtf import FlaskForm
from wtforms import BooleanField, SelectField, StringField, TextAreaField

from app.domain.objectives import OBJECTIVES
from app.domain.strategies import STRATEGIES
from app.domain.taskspec.documents import DocumentError, load_text

try:  # WTForms >= 3.3 deprecates (value, label) tuples
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None  # type: ignore[assignment,misc]


def _choices(pairs: list[tuple[str, str]]) -> list[Any]:
    return [SelectChoice(v, label) for v, label in pairs] if SelectChoice is not None else list(pairs)

DEPLOYMENT_MODES = [("docker", "docker"), ("process", "process (local subprocess)"), ("sim", "sim (simulated)")]
STRATEGY_CHOICES = [(name, cls.label) for name, cls in STRATEGIES.items()]
OBJECTIVE_CHOICES = [(o.name, o.label) for o in OBJECTIVES.values()]
PARAM_KINDS = ("values", "int", "float")
SLO_KEYS = ("ttft", "tpot", "p90", "p99")
PARAM_FIELDS = ("param_name", "param_kind", "param_values", "param_low", "param_high", "param_step", "param_log")

# Form field -> path in the task dict (scalar fields and comma lists).
FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "task_name": ("task_name",),
    "description": ("description",),
    "model": ("model", "id_or_path"),
    "base_runtime": ("base_runtime",),
    "runtime_image_tag": ("runtime_image_tag",),
    "deployment_mode": ("deployment_mode",),
    "sim_time_scale": ("sim", "time_scale"),
    "sim_startup_seconds": ("sim", "startup_seconds"),
    "strategy": ("optimization", "strategy"),
    "objective": ("optimization", "objective"),
    "max_iterations": ("optimization", "max_iterations"),
    "max_parallel_experiments": ("optimization", "max_parallel_experiments"),
    "timeout_per_iteration": ("optimization", "timeout_per_iteration"),
    "list_configs": ("optimization", "configs"),
    "traffic_scenarios": ("benchmark", "traffic_scenarios"),
    "num_concurrency": ("benchmark", "num_concurrency"),
    "request_rate": ("benchmark", "request_rate"),
    "max_requests_per_iteration": ("benchmark", "max_requests_per_iteration"),
    "max_time_per_iteration": ("benchmark", "max_time_per_iteration"),
}
SLO_PATHS: dict[str, tuple[str, ...]] = {
    "ttft": ("slo", "ttft"), "tpot": ("slo", "tpot"), "p90": ("slo", "latency", "p90"), "p99": ("slo", "latency", "p99"),
}
LIST_FIELDS = {"traffic_scenarios", "num_concurrency", "request_rate"}
TEXT_FIELDS = {"task_name", "description", "model", "runtime_image_tag", "base_runtime", "deployment_mode",
               "strategy", "objective"}


class NewTaskForm(FlaskForm):
    """Scalar fields of the New task page; ids equal names. Parameter rows are a repeated
    group read from the request by `param_rows`."""

    class Meta:
        csrf_field_name = "csrf_token"

    task_name = StringField("Task name")
    description = StringField("Description")
    model = StringField("Model (Hugging Face id or path)")
    base_runtime = SelectField("Engine", default="sglang")
    runtime_image_tag = StringField("Image tag (docker)")
    deployment_mode = SelectField("Deployment mode", choices=_choices(DEPLOYMENT_MODES), default="docker")
    sim_time_scale = StringField("Simulated time scale")
    sim_startup_seconds = StringField("Simulated startup (s)")
    strategy = SelectField("Strategy", choices=_choices(STRATEGY_CHOICES), default="grid_search")
    objective = SelectField("Objective", choices=_choices(OBJECTIVE_CHOICES), default="minimize_latency")
    max_iterations = StringField("Max experiments (iterations)")
    max_parallel_experiments = StringField("Max parallel experiments", default="1")
    timeout_per_iteration = StringField("Timeout per experiment (s)", default="600")
    list_configs = TextAreaField("Configurations for strategy list (JSON list of objects)")
    traffic_scenarios = StringField("Traffic scenarios (comma separated)", default="D(100,100)")
    num_concurrency = StringField("Concurrency levels (comma separated)", default="1")
    request_rate = StringField("Request rates, req/s (comma separated; replaces concurrency levels)")
    max_requests_per_iteration = StringField("Max requests per level", default="100")
    max_time_per_iteration = StringField("Max time per level (s)", default="60")
    slo_ttft = StringField("TTFT (s)")
    slo_ttft_hard_fail = BooleanField("hard fail")
    slo_tpot = StringField("TPOT (s)")
    slo_tpot_hard_fail = BooleanField("hard fail")
    slo_p90 = StringField("p90 latency (s)")
    slo_p90_hard_fail = BooleanField("hard fail")
    slo_p99 = StringField("p99 latency (s)")
    slo_p99_hard_fail = BooleanField("hard fail")
    extra_json = TextAreaField("Other settings (JSON merged into the task)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_runtime.choices = _choices(runtime_choices(self.base_runtime.data))


def runtime_choices(current: str | None = None) -> list[tuple[str, str]]:
    """The registry's engines (an operator's engines file included), the simulated engine, and
    the value a loaded file names if it is none of those (an OME runtime name), so the form
    shows what the file says."""
    from app.domain.engines import SIMULATOR, engines

    try:
        known = engines()
    except ValueError:  # a broken engines file: submission reports it, the page still renders
        from app.domain.engines import builtin_engines

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
    return _get(data, key).lower() in ("y", "yes", "on", "true", "1")


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


def _row_is_blank(row: Mapping[str, str]) -> bool:
    return not any(row.get(k) for k in ("name", "values", "low", "high", "step"))


def row_to_domain(row: Mapping[str, str]) -> Any:
    """One parameter row -> the task file's definition of that parameter."""
    kind = row.get("kind") or "values"
    log = (row.get("log") or "").lower() in ("log", "on", "true", "1", "y")
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


def form_to_task(form_data: Mapping[str, Any], problems: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
    for field, path in FIELD_PATHS.items():
        text = _get(form_data, field)
        if not text:
            continue
        if field == "list_configs":
            try:
                value: Any = load_text(text, as_json=True)
            except DocumentError as exc:
                problems.append({"loc": ["form", "list_configs"], "msg": str(exc)})
                continue
        elif field in LIST_FIELDS:
            items = split_list(text)
            value = items if field == "traffic_scenarios" else [parse_number(v) for v in items]
        elif field in TEXT_FIELDS:
            value = text
        else:
            value = parse_number(text)
        _set(task, path, value)
    slo: dict[str, Any] = {}
    for key in SLO_KEYS:
        text = _get(form_data, f"slo_{key}")
        if text:
            _set(slo, SLO_PATHS[key][1:], {"threshold": parse_number(text),
                                            "hard_fail": _checked(form_data, f"slo_{key}_hard_fail")})
    if slo:
        task["slo"] = slo
    parameters: dict[str, Any] = {}
    for i, row in enumerate(param_rows(form_data)):
        if _row_is_blank(row):
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
    # An SLO target kept from the extra JSON whose threshold was cleared on the form is gone.
    if isinstance(task.get("slo"), dict):
        for key in SLO_KEYS:
            path = SLO_PATHS[key][1:]
            parent = task["slo"] if len(path) == 1 else task["slo"].get(path[0])
            if isinstance(parent, dict) and isinstance(parent.get(path[-1]), dict) and "threshold" not in parent[path[-1]]:
                del parent[path[-1]]
        if isinstance(task["slo"].get("latency"), dict) and not task["slo"]["latency"]:
            del task["slo"]["latency"]
    return task


# -- filling the form from a task ------------------------------------------------------------


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return repr(value)  # keep "1.0" a float
    return str(value)


def domain_to_row(name: str, raw: Any) -> dict[str, str]:
    row = {"name": name, "kind": "values", "values": "", "low": "", "high": "", "step": "", "log": ""}
    if isinstance(raw, dict):
        kind = raw.get("type", "choice" if "values" in raw else None)
        if kind in ("int", "integer", "float", "continuous"):
            row["kind"] = "int" if kind in ("int", "integer") else "float"
            for key in ("low", "high", "step"):
                if raw.get(key) is not None and not (key == "step" and row["kind"] == "float"):
                    row[key] = format_value(raw[key])
            row["log"] = "log" if raw.get("log") else ""
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


def task_to_form(task: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]], dict[str, Any]]:
    """A task dict -> (scalar field values, parameter rows, extra: the rest of the task)."""
    rest = copy.deepcopy(dict(task))
    data: dict[str, Any] = {}
    for field, path in FIELD_PATHS.items():
        value = _pop(rest, path)
        if value is None:
            continue
        if field == "list_configs":
            data[field] = json.dumps(value)
        elif field in LIST_FIELDS:
            data[field] = ", ".join(format_value(v) for v in (value if isinstance(value, list) else [value]))
        else:
            data[field] = format_value(value)
    for key in SLO_KEYS:
        path = SLO_PATHS[key]
        target = _pop(rest, path + ("threshold",))
        if target is not None:
            data[f"slo_{key}"] = format_value(target)
            data[f"slo_{key}_hard_fail"] = bool(_pop(rest, path + ("hard_fail",)))
    params = rest.pop("parameters", None) or {}
    rows = [domain_to_row(str(name), raw) for name, raw in params.items()] if isinstance(params, dict) else []
    return data, rows, _prune(rest)
