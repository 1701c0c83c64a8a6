"""Chart series for the task page, built on the server from the store.

Every function here is pure over a SQLAlchemy session: it reads columns (not ORM objects
with relationships), so a task with thousands of experiments costs a few narrow queries,
and caps what it returns (`MAX_POINTS` per series) so the browser never receives an
unbounded payload. Times are seconds since the task started (`origin` in the result).

The series:

* `objective`: every finished experiment in finish-time order, at its measured figure in the
  objective's unit (`unit`). Eligible ones (succeeded, an objective, no hard SLO broken) are
  points, those that broke a soft SLO marked as such with the penalised score that ranks them;
  the running best follows the scores in the task's direction; failed, timed-out, cancelled
  and hard-SLO-ineligible ones are `marks` (they never become the best).
* `pareto`: per traffic scenario, output throughput per GPU against p99 TTFT at the scored
  level (`objective_level`, else the highest), with the Pareto front (max throughput,
  min p99 TTFT) over all plotted points.
* `params`: per parameter, (value, measured figure) pairs of experiments that have an objective.
* `timeline`: who held which GPU when, from `GpuAllocation` (open holds end "now").
* `front` (multi-objective tasks, else null): every experiment that met every SLO on the first
  two objectives, in their units, flagged when on the Pareto front (app.results).
"""
from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Iterable, Sequence, TypeVar

from cachetools import LRUCache
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.domain.states import ExperimentState
from app.store.models import Experiment, Gpu, GpuAllocation, Task, gpu_label, utcnow
from app.domain.objectives import OBJECTIVES, direction, eligible, figure, scored_level
from app.results import front_chart

MAX_POINTS = 2000  # per series

T = TypeVar("T")


def thin(items: Sequence[T], cap: int = MAX_POINTS) -> list[T]:
    """At most `cap` items spread evenly over `items`, first and last included."""
    n = len(items)
    if n <= cap:
        return list(items)
    if cap <= 1:
        return list(items[-cap:]) if cap == 1 else []
    step = (n - 1) / (cap - 1)
    return [items[round(i * step)] for i in range(cap)]


def _keep_then_thin(items: list[dict], keep: set[int], cap: int = MAX_POINTS) -> list[dict]:
    """`items` capped at `cap`: the ones at indices in `keep` first (thinned if they alone
    exceed half the cap), the rest thinned into what is left; original order kept."""
    if len(items) <= cap:
        return items
    kept = thin(sorted(keep), cap // 2) if len(keep) > cap // 2 else sorted(keep)
    kept_set = set(kept)
    others = thin([i for i in range(len(items)) if i not in kept_set], cap - len(kept))
    return [items[i] for i in sorted(kept_set.union(others))]


def _r(value: float | None) -> float | None:
    """Six significant digits: plenty for a chart, and a third of the JSON of a full float."""
    return float(f"{value:.6g}") if value is not None else None


def _secs(when: datetime | None, origin: datetime) -> float | None:
    return round((when - origin).total_seconds(), 3) if when is not None else None


def _origin(task: Task) -> datetime:
    return task.started_at or task.created_at or utcnow()


# -- 1. objective per experiment, with the running best -------------------------------------

def slo_mark(slo_ok: bool | None, penalty: float | None) -> str:
    """How an experiment fared against the SLOs: "met", "penalised" (a soft SLO broken: its
    score carries the penalty and it may still rank first) or "broken" (a hard SLO: ineligible)."""
    if slo_ok is False:
        return "broken"
    return "penalised" if penalty else "met"


def objective_series(session: Session, task: Task, cap: int = MAX_POINTS) -> dict[str, Any]:
    """Each point's `y` is the measured figure in the objective's unit; `score` is what ranks
    it (the figure with the SLO penalty applied) and `slo` says why the two differ. SLO-breaking
    points are marked, not inflated: a TTFT of 8.7 s sits at 8.7 s, not at its penalised score."""
    origin = _origin(task)
    minimize = direction(task.objective) == "minimize"
    rows = session.execute(
        select(Experiment.id, Experiment.seq, Experiment.state, Experiment.finished_at, Experiment.objective,
               Experiment.slo_ok, Experiment.measured, Experiment.penalty)
        .where(Experiment.task_id == task.id, Experiment.finished_at.is_not(None))
        .order_by(Experiment.finished_at, Experiment.seq)
    ).all()
    points: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    best_line: list[dict[str, Any]] = []
    improved: set[int] = set()
    best: float | None = None
    best_y: float | None = None
    for exp_id, seq, state, finished_at, objective, slo_ok, measured, penalty in rows:
        t = _secs(finished_at, origin)
        y = _r(figure(measured, objective, task.objective))
        if not eligible(state, objective, slo_ok):
            marks.append({"t": t, "seq": seq, "id": exp_id, "state": state, "slo_ok": slo_ok, "y": y,
                          "score": _r(objective), "slo": slo_mark(slo_ok, penalty)})
            continue
        if best is None or (objective < best if minimize else objective > best):
            best, best_y = objective, y
            improved.add(len(points))
            best_line.append({"t": t, "y": best_y, "score": _r(best), "seq": seq, "id": exp_id})
        points.append({"t": t, "y": y, "score": _r(objective), "penalty": _r(penalty), "slo": slo_mark(slo_ok, penalty),
                       "seq": seq, "id": exp_id})
    if best_line and points and points[-1]["t"] != best_line[-1]["t"]:
        best_line.append(dict(best_line[-1], t=points[-1]["t"]))
    o = OBJECTIVES[task.objective]
    return {
        "direction": "minimize" if minimize else "maximize",
        "unit": o.unit,
        "label": o.label,
        "points": _keep_then_thin(points, improved, cap),
        "best": thin(best_line, cap),
        "marks": thin(marks, cap),
        "total_points": len(points),
        "total_marks": len(marks),
    }


# -- 2. throughput per GPU against p99 TTFT, with the Pareto front --------------------------

# An experiment's metrics never change once it has finished, so what the chart needs from
# them (a few floats) is kept per process: polling a big task reads the JSON column of the
# experiments that finished since the last poll, not of all of them. A restarted web
# process simply rebuilds it.
# key: (database URL, experiment id, finished_at, objective level)
_PERF_CACHE: LRUCache[tuple, list[tuple[str, float | None, float | None]]] = LRUCache(maxsize=50_000)
_perf_lock = threading.Lock()


def perf_points(metrics: dict[str, Any] | None, at: float | None) -> list[tuple[str, float | None, float | None]]:
    """(scenario, output throughput per GPU, p99 TTFT ms) of each scenario at its scored level."""
    out = []
    for sc in (metrics or {}).get("scenarios") or []:
        levels = sc.get("levels") or []
        if not levels:
            continue
        level = scored_level(levels, at)
        out.append((str(sc.get("scenario", "")), level.get("output_throughput_per_gpu"), level.get("p99_ttft_ms")))
    return out


def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, maximising x and minimising y, sorted by x.

    q dominates p when q.x >= p.x and q.y <= p.y and q != p; equal points do not dominate
    each other, so duplicates on the front are all kept."""
    pts = list(points)
    order = sorted(range(len(pts)), key=lambda i: (-pts[i][0], pts[i][1]))
    front: list[int] = []
    best_y = float("inf")  # lowest y among points with strictly larger x
    i = 0
    while i < len(order):
        x = pts[order[i]][0]
        group = []
        while i < len(order) and pts[order[i]][0] == x:
            group.append(order[i])
            i += 1
        gy = pts[group[0]][1]  # sorted: the group's lowest y first
        if gy < best_y:
            front.extend(j for j in group if pts[j][1] == gy)
        best_y = min(best_y, gy)
    return sorted(front, key=lambda j: (pts[j][0], pts[j][1]))


def _cached_perf(session: Session, ids_and_finish: list[tuple[int, Any]], at: float | None):
    db = str(session.get_bind().url)
    keys = {exp_id: (db, exp_id, finished_at, at) for exp_id, finished_at in ids_and_finish}
    found: dict[int, list] = {}
    missing = []
    with _perf_lock:
        for exp_id, key in keys.items():
            hit = _PERF_CACHE.get(key)
            if hit is None:
                missing.append(exp_id)
            else:
                found[exp_id] = hit
    for chunk_start in range(0, len(missing), 500):
        chunk = missing[chunk_start:chunk_start + 500]
        rows = session.execute(select(Experiment.id, Experiment.metrics).where(Experiment.id.in_(chunk))).all()
        with _perf_lock:
            for exp_id, metrics in rows:
                found[exp_id] = _PERF_CACHE[keys[exp_id]] = perf_points(metrics, at)
    return found


def pareto_series(session: Session, task: Task, cap: int = MAX_POINTS) -> dict[str, Any]:
    at = task.parsed_spec.optimization.objective_level
    rows = session.execute(
        select(Experiment.id, Experiment.seq, Experiment.slo_ok, Experiment.finished_at)
        .where(Experiment.task_id == task.id, Experiment.state == ExperimentState.SUCCEEDED)
        .order_by(Experiment.seq)
    ).all()
    perf = _cached_perf(session, [(r[0], r[3]) for r in rows], at)
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for exp_id, seq, slo_ok, _ in rows:
        for scenario, tput, p99 in perf.get(exp_id, []):
            if tput is None or p99 is None:
                continue
            by_scenario.setdefault(scenario, []).append(
                {"x": _r(float(tput)), "y": _r(float(p99)), "seq": seq, "id": exp_id, "slo_ok": slo_ok is not False}
            )
    scenarios = []
    for scenario, pts in by_scenario.items():
        front_idx = pareto_front([(p["x"], p["y"]) for p in pts])
        scenarios.append({
            "scenario": scenario,
            "points": _keep_then_thin(pts, set(front_idx), cap),
            "front": thin([pts[i] for i in front_idx], cap),
            "total_points": len(pts),
        })
    return {"level": at, "x": "output_throughput_per_gpu", "y": "p99_ttft_ms", "scenarios": scenarios}


# -- 3. each parameter against the objective ------------------------------------------------

def param_series(session: Session, task: Task, cap: int = MAX_POINTS) -> dict[str, Any]:
    """With more than `cap` experiments, the best quarter of `cap` (in the task's direction)
    plus an even spread of the rest; only their parameters are read."""
    rows = session.execute(
        select(Experiment.id, Experiment.seq, Experiment.objective, Experiment.slo_ok, Experiment.measured,
               Experiment.penalty)
        .where(Experiment.task_id == task.id, Experiment.state == ExperimentState.SUCCEEDED, Experiment.objective.is_not(None))
        .order_by(Experiment.seq)
    ).all()
    total = len(rows)
    if total > cap:
        minimize = direction(task.objective) == "minimize"
        ranked = sorted(range(total), key=lambda i: rows[i][2] if minimize else -rows[i][2])
        top = set(ranked[: cap // 4])
        rest = thin([i for i in range(total) if i not in top], cap - len(top))
        rows = [rows[i] for i in sorted(top.union(rest))]
    params_of: dict[int, dict] = {}
    ids = [r[0] for r in rows]
    for start in range(0, len(ids), 500):
        params_of.update(session.execute(
            select(Experiment.id, Experiment.params).where(Experiment.id.in_(ids[start:start + 500]))
        ).all())
    series: dict[str, list[dict[str, Any]]] = {}
    for exp_id, seq, objective, slo_ok, measured, penalty in rows:
        y = _r(figure(measured, objective, task.objective))
        for name, value in (params_of.get(exp_id) or {}).items():
            series.setdefault(name, []).append(
                {"x": value, "y": y, "score": _r(objective), "seq": seq, "id": exp_id, "slo_ok": slo_ok is not False,
                 "slo": slo_mark(slo_ok, penalty)}
            )
    out = []
    for name, pts in series.items():
        numeric = all(isinstance(p["x"], (int, float)) and not isinstance(p["x"], bool) for p in pts)
        values = sorted({p["x"] for p in pts}, key=(lambda v: v) if numeric else str)
        out.append({
            "name": name,
            "numeric": numeric,
            "values": values[:200],  # the category axis when not numeric
            "points": pts,
            "total_points": total,
        })
    return {"objective": task.objective, "unit": OBJECTIVES[task.objective].unit, "params": out}


# -- 4. the GPU timeline --------------------------------------------------------------------

def gpu_timeline(session: Session, task: Task, cap: int = MAX_POINTS) -> dict[str, Any]:
    """Holds of GPUs by this task's experiments; with more than `cap`, the latest `cap`."""
    origin = _origin(task)
    now = utcnow()
    base = (
        select(Gpu.host, Gpu.index, Gpu.slot, Gpu.slots, GpuAllocation.experiment_id, Experiment.seq, GpuAllocation.attempt,
               GpuAllocation.allocated_at, GpuAllocation.released_at, Experiment.state)
        .join(Gpu, Gpu.id == GpuAllocation.gpu_id)
        .join(Experiment, Experiment.id == GpuAllocation.experiment_id)
        .where(Experiment.task_id == task.id)
    )
    total = session.execute(
        select(func.count()).select_from(GpuAllocation)
        .join(Experiment, Experiment.id == GpuAllocation.experiment_id)
        .where(Experiment.task_id == task.id)
    ).scalar_one()
    rows = session.execute(base.order_by(GpuAllocation.allocated_at.desc(), GpuAllocation.id.desc()).limit(cap)).all()
    rows.reverse()
    lanes = sorted({(host, index, slot, slots) for host, index, slot, slots, *_ in rows})
    bars = [
        {
            "gpu": gpu_label(host, index, slot, slots), "id": exp_id, "seq": seq, "attempt": attempt, "state": state,
            "start": _secs(allocated_at, origin), "end": _secs(released_at or now, origin), "open": released_at is None,
        }
        for host, index, slot, slots, exp_id, seq, attempt, allocated_at, released_at, state in rows
    ]
    return {"gpus": [gpu_label(*lane) for lane in lanes], "bars": bars, "total_bars": total, "now": _secs(now, origin)}


def task_charts(session: Session, task: Task, cap: int = MAX_POINTS) -> dict[str, Any]:
    """All the series of a task, as the `/api/tasks/<id>/charts` body."""
    origin = _origin(task)
    return {
        "task_id": task.id,
        "objective_name": task.objective,
        "objective_unit": OBJECTIVES[task.objective].unit,
        "objective_label": OBJECTIVES[task.objective].label,
        "origin": origin.isoformat(timespec="milliseconds") + "Z",
        "max_points": cap,
        "objective": objective_series(session, task, cap),
        "pareto": pareto_series(session, task, cap),
        "params": param_series(session, task, cap),
        "timeline": gpu_timeline(session, task, cap),
        "front": front_chart(session, task, cap),
    }
