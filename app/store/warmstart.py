"""Warm start: a task that starts from an earlier task's results.

The earlier task must have measured the same thing (app.domain.warmstart.differences); that is
checked at submission, so an incompatible history is refused with what differs, before anything
runs. Once running, the coordinator tries the earlier task's `warm_start_top` best configurations
first (like Optuna's `enqueue_trial`), each marked with the experiment it comes from, and gives
its measured history to the Bayesian sampler, which then neither repeats those points nor spends
its initial design rediscovering what they showed. Points outside the new search space are left
out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from app.domain.objectives import trial_values
from app.domain.strategies.base import Trial, canonical
from app.domain.taskspec import Choice, Domain, FloatRange, IntRange, TaskSpec, TaskSpecError
from app.domain.warmstart import differences
from app.store.db import session_scope
from app.store.models import Experiment, Task

LOC = ["optimization", "warm_start_from"]


@dataclass
class WarmStart:
    task_id: int
    first: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (earlier experiment, params), best first
    trials: list[Trial] = field(default_factory=list)  # the earlier history, for the sampler


def _inside(space: dict[str, Domain], params: dict[str, Any]) -> bool:
    if {k for k, v in params.items() if v is not None} - set(space):
        return False
    for name, dom in space.items():
        value = params.get(name)
        if isinstance(dom, Choice):
            ok = value in dom.values
        elif isinstance(dom, IntRange):
            ok = isinstance(value, int) and value in dom.grid_values()
        else:
            assert isinstance(dom, FloatRange)
            ok = isinstance(value, (int, float)) and dom.low <= value <= dom.high
        if not ok:
            return False
    return True


def _measured(session: Session, task_id: int) -> list[Experiment]:
    """The earlier task's search experiments that may be the best, best first."""
    task = session.get(Task, task_id)
    order = Experiment.objective if task.parsed_spec.objective_direction == "minimize" else Experiment.objective.desc()
    return list(session.execute(select(Experiment).where(Experiment.task_id == task_id, Experiment.eligible,
                                                         Experiment.repeat_of.is_(None))
                                .options(defer(Experiment.metrics), defer(Experiment.engine_log))  # up to 20 KB each
                                .order_by(order, Experiment.seq)).scalars())


def check_warm_start(spec: TaskSpec) -> None:
    """Refuse a warm start whose earlier task is missing, measured something else, or measured
    nothing (a TaskSpecError on `optimization.warm_start_from`, saying why)."""
    earlier_id = spec.optimization.warm_start_from
    if earlier_id is None:
        return
    with session_scope(readonly=True) as session:
        task = session.get(Task, earlier_id)
        if task is None:
            raise TaskSpecError([{"loc": LOC, "msg": f"there is no task {earlier_id} to start from"}])
        try:
            earlier = task.parsed_spec
        except Exception as exc:  # noqa: BLE001 - a stored task an older version wrote
            raise TaskSpecError([{"loc": LOC, "msg": f"task {earlier_id} no longer loads: {exc}"}]) from None
        found = differences(earlier, spec)
        if found:
            raise TaskSpecError([{"loc": LOC, "msg": f"task {earlier_id} measured something else, so its history "
                                  f"cannot be used: {'; '.join(found)}"}])
        if not _measured(session, earlier_id):
            raise TaskSpecError([{"loc": LOC, "msg": f"task {earlier_id} has no measured experiment to start from"}])


def warm_start(session: Session, spec: TaskSpec) -> WarmStart | None:
    """What the earlier task gives this one (None without a warm start)."""
    earlier_id = spec.optimization.warm_start_from
    if earlier_id is None or session.get(Task, earlier_id) is None:
        return None
    names = spec.objective_names
    out = WarmStart(earlier_id)
    seen: set[str] = set()
    for exp in _measured(session, earlier_id):
        if not _inside(spec.search_space, exp.params):
            continue
        out.trials.append(Trial(params=dict(exp.params), state=exp.state, objective=exp.objective,
                                values=trial_values(exp.measured, exp.penalty, names)))
        key = canonical(exp.params)
        if len(out.first) < spec.optimization.warm_start_top and key not in seen:
            out.first.append((exp.id, dict(exp.params)))
        seen.add(key)
    return out
