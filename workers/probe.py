"""The incumbent probe in an experiment job (the rules are app.domain.stopping's).

Why: an experiment that cannot be the task's answer should give its GPUs back as soon as that
is known. With `optimization.early_stopping.probe`, the job runs the deciding load level first;
when it ends, the score there is compared with the task's best so far (read from the database
at that moment, so it sees results that came in while this engine started).
Running experiments whose probe already measured their deciding level count too: that score
is final. If it cannot win or breaks a hard SLO, the remaining levels are skipped: the benchmark stops
after that level, the engine is stopped and the GPUs are freed by the job's usual end. The
experiment succeeds with its exact score and says why it stopped (`stop_reason`).

The probe applies to closed- or open-loop level lists of a task with one traffic scenario (with
several, the objective is a mean over scenarios that no single level decides) and not to the
highest-sustainable-rate search, whose levels are chosen as it goes.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select, update

from app.domain.objectives import score
from app.domain.states import ExperimentState
from app.domain.stopping import probe_order, probe_verdict
from app.domain.taskspec import TaskSpec
from app.store.db import session_scope
from app.store.models import Experiment


def incumbent(task_id: int, direction: str) -> float | None:
    """The task's best score so far: of the experiments that may be the best, and of the running
    ones whose probe has measured their deciding level (that score is final; with 8 engines
    started at once, the first probe to end is what the others must beat)."""
    best = func.max(Experiment.objective) if direction == "maximize" else func.min(Experiment.objective)
    probed = and_(Experiment.state == ExperimentState.RUNNING, Experiment.objective.is_not(None),
                  Experiment.slo_ok.is_(True))
    with session_scope() as session:
        return session.execute(select(best).where(Experiment.task_id == task_id,
                                                  or_(Experiment.eligible, probed))).scalar()


def record_probe(experiment_id: int, attempt: int, objective: float) -> None:
    """Keep a probe's score on its running experiment (the job's end overwrites it with the
    result; a retry clears it): the probes of the task's other experiments compare with it."""
    with session_scope() as session:
        session.execute(update(Experiment).where(
            Experiment.id == experiment_id, Experiment.attempt == attempt, Experiment.state == ExperimentState.RUNNING,
        ).values(objective=objective, slo_ok=True))


class Probe:
    """One experiment's probe: the level order, and the verdict after the first level."""

    def __init__(self, spec: TaskSpec, task_id: int, experiment_id: int, attempt: int) -> None:
        es = spec.optimization.early_stopping
        bench = spec.benchmark
        self.spec, self.task_id = spec, task_id
        self.experiment_id, self.attempt = experiment_id, attempt
        self.active = (es is not None and es.probe and len(bench.traffic_scenarios) == 1 and len(bench.levels) > 1
                       and not spec.uses_rate_search)
        self.reason: str | None = None
        self.best: float | None = None
        self._levels_seen = 0

    def order(self, levels: list[Any]) -> list[Any]:
        """The levels to run, the deciding one first when probing."""
        if not self.active:
            return levels
        first = probe_order([float(v) for v in levels], self.spec.optimization.objective_level)[0]
        return [v for v in levels if float(v) == first] + [v for v in levels if float(v) != first]

    def after_level(self, level: dict[str, Any]) -> None:
        """After each level (as it counts: in modelled time, with the figures kept for it): the
        first one decides whether the others run."""
        self._levels_seen += 1
        if not self.active or self._levels_seen != 1:
            return
        s = score([[level]], self.spec.optimization.objective, self.spec.to_dict().get("slo"))
        # Several objectives: a worse first figure may still be on the Pareto front, so only a
        # broken hard SLO stops the experiment there.
        single = len(self.spec.objective_names) == 1
        self.best = incumbent(self.task_id, self.spec.objective_direction) if single else None
        self.reason = probe_verdict(s, self.best, self.spec.optimization.objective)
        if single and self.reason is None and s.objective is not None and s.slo_ok:
            record_probe(self.experiment_id, self.attempt, s.objective)

    def stopped(self) -> bool:
        return self.reason is not None

    def record(self) -> dict[str, Any]:
        """What the experiment's metrics keep about the stop."""
        return {"reason": self.reason, "incumbent": self.best, "levels_run": self._levels_seen}
