"""What a task answers beyond its single best: a multi-objective task's Pareto set, with the
hypervolume it dominates, what the repeats of the top configurations say, and which flags
mattered.

The set is made of the experiments that may be the best (succeeded, measured, no hard SLO
broken) and broke no SLO at all: a soft SLO's penalty is a ranking device for one objective
and has no meaning on a front of measured figures. Each point carries its figures in their
units, its parameters and its launch command, so a user can pick one and copy it. The
hypervolume is computed against the task's `optimization.reference_point`, or, when it
states none, against each objective's worst measured figure made 10 % worse; the result says
which (`reference_given`).
"""
from __future__ import annotations

import shlex
from typing import Any

from cachetools import LRUCache
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.domain.objectives import OBJECTIVES, figure, trial_values
from app.domain.pareto import default_reference, front, hypervolume
from app.domain.repeats import Run, Summary, summarise, verdict
from app.domain.states import EXP_ACTIVE, ExperimentState
from app.domain.strategies.bayesian import Encoding, quiet_optuna
from app.store.models import Experiment, Task


def _candidates(session: Session, task: Task, names: list[str]) -> list[tuple[Any, tuple[float, ...]]]:
    """(row, figures) of the experiments a front is made of, by seq."""
    rows = session.execute(
        select(Experiment.id, Experiment.seq, Experiment.params, Experiment.measured)
        .where(Experiment.task_id == task.id, Experiment.eligible,
               (Experiment.penalty.is_(None)) | (Experiment.penalty == 0))
        .order_by(Experiment.seq)
    ).all()
    return [(r, tuple(r.measured[n] for n in names)) for r in rows if r.measured and all(n in r.measured for n in names)]


def pareto_set(session: Session, task: Task) -> dict[str, Any] | None:
    """The task's Pareto set and hypervolume; None for a single-objective task."""
    spec = task.parsed_spec
    names = spec.objective_names
    if len(names) < 2:
        return None
    directions = [OBJECTIVES[n].direction for n in names]
    candidates = _candidates(session, task, names)
    figures = [f for _, f in candidates]
    given = spec.optimization.reference_point
    reference = list(given) if given else (default_reference(figures, directions) if figures else None)
    on_front = [candidates[i] for i in front(figures, directions)]
    return {
        "objectives": [OBJECTIVES[n].as_dict() for n in names],
        "reference_point": reference,
        "reference_given": bool(given),
        "hypervolume": hypervolume(figures, directions, reference) if reference else 0.0,
        "candidates": len(candidates),
        "points": [_point(spec.launch_command(r.params), r, f) for r, f in sorted(on_front, key=lambda c: c[1])],
    }


def _point(command: list[str], row: Any, figures: tuple[float, ...]) -> dict[str, Any]:
    return {"id": row.id, "seq": row.seq, "params": row.params, "values": list(figures),
            "launch_command": command, "launch_command_shell": shlex.join(command)}


def front_chart(session: Session, task: Task, cap: int) -> dict[str, Any] | None:
    """Every candidate's figures on the first two objectives (the third, if any, rides along),
    flagged when on the front; the front's points are kept first when there are over `cap`."""
    names = task.parsed_spec.objective_names
    if len(names) < 2:
        return None
    directions = [OBJECTIVES[n].direction for n in names]
    candidates = _candidates(session, task, names)
    on_front = set(front([f for _, f in candidates], directions))
    points = [{"x": f[0], "y": f[1], "values": list(f), "seq": r.seq, "id": r.id, "front": i in on_front}
              for i, (r, f) in enumerate(candidates)]
    kept = [p for p in points if p["front"]][:cap]
    kept += [p for p in points if not p["front"]][: cap - len(kept)]
    return {"objectives": [OBJECTIVES[n].as_dict() for n in names], "points": kept, "total_points": len(points)}


def repeat_verdict(session: Session, task: Task) -> dict[str, Any] | None:
    """What the repeats say (app.domain.repeats): each re-measured configuration's runs (the
    search's measurement and its repeats), mean, spread and the figure to rely on; the winner,
    and whether it is a tie with the runner-up. None when the task has no repeats yet."""
    spec = task.parsed_spec
    objective = spec.optimization.objective
    repeats = session.execute(
        select(Experiment.id, Experiment.seq, Experiment.state, Experiment.repeat_of, Experiment.objective,
               Experiment.slo_ok, Experiment.measured, Experiment.penalty, Experiment.params)
        .where(Experiment.task_id == task.id, Experiment.repeat_of.is_not(None))).all()
    if not repeats:
        return None
    originals = session.execute(
        select(Experiment.id, Experiment.seq, Experiment.state, Experiment.repeat_of, Experiment.objective,
               Experiment.slo_ok, Experiment.measured, Experiment.penalty, Experiment.params)
        .where(Experiment.id.in_({r.repeat_of for r in repeats}))).all()
    runs: dict[int, list[Run]] = {o.id: [] for o in originals}
    params = {o.id: o.params for o in originals}
    pending = 0
    for row in [*originals, *repeats]:
        if row.state in EXP_ACTIVE:
            pending += 1
        elif row.state == ExperimentState.SUCCEEDED and row.objective is not None:
            runs[row.repeat_of or row.id].append(Run(row.id, row.seq, figure(row.measured, row.objective, objective),
                                                      row.penalty or 0.0, row.slo_ok is not False))
    summaries = [summarise(str(origin), params[origin], rs, objective) for origin, rs in runs.items() if rs]
    found = verdict(summaries, objective)

    def shown(s: Summary | None) -> dict[str, Any] | None:
        if s is None:
            return None
        command = spec.launch_command(s.params)
        return s.as_dict() | {"launch_command": command, "launch_command_shell": shlex.join(command)}

    return {
        "objective": OBJECTIVES[objective].as_dict(),
        "repeats": spec.optimization.repeats,
        "pending": pending,
        "configurations": [shown(s) for s in (*found["ranked"], *found["ineligible"])],
        "winner": shown(found["winner"]),
        "runner_up": shown(found["runner_up"]),
        "tie": found["tie"],
        "tied": [shown(s) for s in found["tied"]],
    }


# Importances change only when an experiment finishes: kept per process, keyed by what they
# were computed from, so polling a running task does not refit on every request.
_IMPORTANCE: LRUCache[tuple, dict[str, Any]] = LRUCache(maxsize=256)
MIN_FOR_IMPORTANCE = 4
IMPORTANCE_METHOD = "PED-ANOVA (Optuna)"


def importance(session: Session, task: Task) -> dict[str, Any] | None:
    """Which flags mattered: each tuned parameter's share of the importance for each objective,
    from the search's measured experiments (repeats left out), by Optuna's PED-ANOVA: how much
    a parameter's values differ between the top 10 % of experiments and all of them. (Optuna's
    fANOVA needs scikit-learn; PED-ANOVA is Optuna's own and made for "what gets a
    configuration to the top".) None when nothing is tuned; no figures before
    MIN_FOR_IMPORTANCE experiments have been measured."""
    spec = task.parsed_spec
    tuned = {name: dom for name, dom in spec.search_space.items() if not dom.is_finite or dom.size() > 1}
    if not tuned:
        return None
    measured = (Experiment.task_id == task.id, Experiment.eligible, Experiment.repeat_of.is_(None))
    count, last = session.execute(select(func.count(), func.max(Experiment.id)).where(*measured)).one()
    key = (str(session.get_bind().url), task.id, count, last)  # a poll reads two numbers, not every row
    found = _IMPORTANCE.get(key)
    if found is None:
        rows = session.execute(
            select(Experiment.id, Experiment.params, Experiment.objective, Experiment.measured, Experiment.penalty)
            .where(*measured).order_by(Experiment.id)).all()
        found = _IMPORTANCE[key] = _importance(tuned, spec.objective_names, rows)
    return found


def _importance(tuned: dict[str, Any], names: list[str], rows: list[Any]) -> dict[str, Any]:
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    out: dict[str, Any] = {"method": IMPORTANCE_METHOD, "experiments": len(rows), "objectives": []}
    if len(rows) < MIN_FOR_IMPORTANCE:
        out["note"] = f"needs at least {MIN_FOR_IMPORTANCE} measured experiments ({len(rows)} so far)"
        return out
    encoding = Encoding(tuned)
    for k, name in enumerate(names):
        with quiet_optuna():
            study = optuna.create_study(direction=OBJECTIVES[name].direction)
        for row in rows:
            params = encoding.encode(row.params)
            values = trial_values(row.measured, row.penalty, names) if len(names) > 1 else (row.objective,)
            if params is not None and values is not None:
                study.add_trial(optuna.trial.create_trial(params=params, distributions=encoding.dists,
                                                          value=float(values[k])))
        scores = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator()) if study.trials else {}
        out["objectives"].append({**OBJECTIVES[name].as_dict(), "params": [
            {"name": param, "importance": float(share)} for param, share in scores.items()]})
    return out
