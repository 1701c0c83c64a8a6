"""A task as a file to keep or share: the JSON export (spec, summary, every experiment with
metrics) and the CSV of experiments (one column per parameter, each objective's measured
figure under a header that names its unit, the ranking score and its SLO penalty, key metrics
at the scored level). Used by the pages' downloads and by the API; no web code here."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from app.domain.objectives import OBJECTIVES, figure, scored_level
from app.serializers import experiment_dict, iso, task_dict
from app.store.models import Task, utcnow

EXPORT_FORMAT = "autotuner-task-export/1"
# Figures of the scored load level written to the CSV, per traffic scenario.
CSV_METRICS = (
    "completed", "errors", "request_throughput", "output_throughput", "output_throughput_per_gpu",
    "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "p99_e2el_ms",
    "goodput",
)
CSV_FIXED = ("seq", "state", "attempts", "gpus", "worker", "started_at", "finished_at", "objective", "slo_penalty",
             "slo_ok", "scored_level", "error")


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
    objectives = task.parsed_spec.objective_names
    header = ["seq", "state", "attempts", *param_cols, "gpus", "worker", "started_at", "finished_at",
              *(f"{name} ({OBJECTIVES[name].unit})" for name in objectives), "objective", "slo_penalty",
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
            _cell(exp.worker), iso(exp.started_at) or "", iso(exp.finished_at) or "",
            *(_cell(figure(exp.measured, exp.objective if i == 0 else None, name)) for i, name in enumerate(objectives)),
            _cell(exp.objective), _cell(exp.penalty), _cell(exp.slo_ok), ", ".join(sorted(levels)),
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
