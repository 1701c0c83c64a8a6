"""The live task page: its JSON feeds (polled by static/js/task.js) and the task and
experiment pages themselves, rendered on the server first so they work without JS.

Everything is read from the store in a read-only transaction per request, so polling
survives a restart of the web process: the browser just retries until it answers again.
The experiments table is paginated and the charts are aggregated and capped on the server
(app/web/charts.py), so a task with thousands of experiments stays fast.
"""
from __future__ import annotations

import math
import shlex
from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, selectinload

from app.store.db import session_scope
from app.web.lookup import get_or_404
from app.domain.states import TASK_TERMINAL, EXP_STATES
from app.store.models import Experiment, Task
from app.domain.objectives import OBJECTIVES, level_value, score_level, scored_level
from app.serializers import experiment_dict, objectives_of, task_dict

bp = Blueprint("live", __name__)

PER_PAGE_DEFAULT = 50
PER_PAGE_MAX = 200
PAGE_MAX = 10**9  # any larger page is past the end of any task anyway


def _int_arg(name: str, default: int, low: int, high: int | None = None) -> int:
    try:
        value = int(request.args.get(name, default))
    except (TypeError, ValueError):
        value = default
    value = max(low, value)
    return min(value, high) if high is not None else value


def _states_arg() -> list[str]:
    """`state=failed,timed_out` (or repeated `state=`); unknown names are ignored."""
    raw = ",".join(request.args.getlist("state"))
    return [s for s in (p.strip() for p in raw.split(",")) if s in EXP_STATES]


def key_metrics(metrics: dict[str, Any] | None, at: float | None) -> dict[str, Any] | None:
    """The table's figures at the scored level: mean throughput per GPU over scenarios, the
    worst (highest) p99 TTFT and mean TPOT; None before the experiment has metrics."""
    points = []
    for sc in (metrics or {}).get("scenarios") or []:
        if sc.get("levels"):
            points.append(scored_level(sc["levels"], at))
    if not points:
        return None

    def worst(key: str) -> float | None:
        vals = [p[key] for p in points if p.get(key) is not None]
        return max(vals) if vals else None

    tputs = [p["output_throughput_per_gpu"] for p in points if p.get("output_throughput_per_gpu") is not None]
    return {
        "output_throughput_per_gpu": sum(tputs) / len(tputs) if tputs else None,
        "p99_ttft_ms": worst("p99_ttft_ms"),
        "mean_tpot_ms": worst("mean_tpot_ms"),
        "errors": sum(int(p.get("errors") or 0) for p in points),
    }


def experiments_page(session: Session, task: Task, page: int = 1, per_page: int = PER_PAGE_DEFAULT,
                     states: list[str] | None = None, newest_first: bool = False) -> dict[str, Any]:
    """One page of a task's experiments (by seq), with the total for the filter."""
    at = task.parsed_spec.optimization.objective_level
    where = [Experiment.task_id == task.id]
    if states:
        where.append(Experiment.state.in_(states))
    total = session.execute(select(func.count()).select_from(Experiment).where(*where)).scalar_one()
    pages = max(1, math.ceil(total / per_page))
    page = min(page, pages)  # past the end: the last page (and an OFFSET the database accepts)
    order = Experiment.seq.desc() if newest_first else Experiment.seq.asc()
    rows = session.execute(
        select(Experiment).where(*where).options(selectinload(Experiment.attempts), defer(Experiment.engine_log))
        .order_by(order).offset((page - 1) * per_page).limit(per_page)
    ).scalars().all()
    return {
        "page": page, "per_page": per_page, "pages": pages, "total": total,
        "states": states or [], "order": "desc" if newest_first else "asc",
        "experiments": [experiment_dict(e) | {"key_metrics": key_metrics(e.metrics, at)} for e in rows],
    }


def live_dict(session: Session, task: Task, page: int, per_page: int, states: list[str],
              newest_first: bool = False) -> dict[str, Any]:
    summary = task_dict(session, task, experiments=False)
    best = summary.get("best")
    if best and best.get("launch_command"):
        best["launch_command_shell"] = shlex.join(best["launch_command"])
    summary["terminal"] = task.status in TASK_TERMINAL
    return {
        "task": summary,
        "experiments": experiments_page(session, task, page, per_page, states, newest_first),
    }


def page_args() -> tuple[int, int, list[str], bool]:
    return (
        _int_arg("page", 1, 1, PAGE_MAX),
        _int_arg("per_page", PER_PAGE_DEFAULT, 1, PER_PAGE_MAX),
        _states_arg(),
        request.args.get("order") == "desc",
    )


@bp.get("/tasks/<int:task_id>")
def task_page(task_id: int):
    page, per_page, states, newest_first = page_args()
    with session_scope(readonly=True) as session:
        data = live_dict(session, get_or_404(session, Task, task_id), page, per_page, states, newest_first)
        return render_template("task.html", task=data["task"], page=data["experiments"])


def _spec_bits(task: Task, params: dict[str, Any]) -> tuple[list[str] | None, dict | None, float | None, str | None]:
    """Launch command, SLO and objective level from the stored spec (None where it no
    longer parses: the page still shows everything else)."""
    try:
        spec = task.parsed_spec
        return spec.launch_command(params), spec.to_dict().get("slo"), spec.optimization.objective_level, None
    except Exception as exc:  # noqa: BLE001 - a stored spec from an older version, or an engine since removed
        raw = task.spec or {}
        return None, raw.get("slo"), (raw.get("optimization") or {}).get("objective_level"), \
            f"launch command unavailable: {exc}"


def _price(task: Task) -> float | None:
    return ((task.spec or {}).get("optimization") or {}).get("gpu_price_per_hour")


def scored_levels(metrics: dict[str, Any] | None, objective: str, slo: dict | None,
                  at: float | None, price: float | None = None) -> list[dict[str, Any]]:
    """Each scenario's levels with the SLO verdict of each and which one the objective reads."""
    out = []
    for sc in (metrics or {}).get("scenarios") or []:
        levels = sc.get("levels") or []
        scored = scored_level(levels, at) if levels else None
        rows = []
        for lv in levels:
            verdict = score_level(lv, objective, slo, price) if objective in OBJECTIVES else None
            rows.append({
                "level": lv,
                "load": level_value(lv),
                "open_loop": lv.get("request_rate") is not None,
                "scored": lv is scored,
                "score": verdict.as_dict() if verdict else None,
            })
        out.append({"scenario": sc.get("scenario", ""), "levels": rows})
    return out


@bp.get("/experiments/<int:experiment_id>")
def experiment_page(experiment_id: int):
    with session_scope(readonly=True) as session:
        exp = get_or_404(session, Experiment, experiment_id)
        task = exp.task
        command, slo, at, problem = _spec_bits(task, exp.params or {})
        return render_template(
            "experiment.html",
            exp=experiment_dict(exp, metrics=True),
            task_name=task.name,
            task_objective=task.objective,
            objectives=objectives_of(task),
            unit=OBJECTIVES[task.objective].unit,
            launch_command=command,
            launch_problem=problem,
            slo=slo,
            scenarios=scored_levels(exp.metrics, task.objective, slo, at, _price(task)),
            objective_level=at,
        )
