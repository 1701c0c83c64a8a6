"""Early stopping: which load level to measure first, and when the rest is not worth a GPU.

Why: a task's objective reads one load level per scenario (`optimization.objective_level`, by
default the highest); the other levels only draw the curve around it. A candidate measured
first at that deciding level already has its final score there. If that score cannot beat the
task's current best, or breaks a hard SLO, the candidate can never be the answer, so its other
levels are skipped and its engine stopped at once (the "incumbent probe", as SGLang's
auto-benchmark drops a candidate that fails the SLA at the current best's load). Its score is
exact, not a guess, so the search learns from it like from any finished experiment.
"""
from __future__ import annotations

from app.domain.objectives import Score, is_better

CANNOT_WIN = "cannot_win"
HARD_SLO = "hard_slo"
# Why an experiment's remaining load levels were skipped -> how a person reads it.
STOP_REASONS: dict[str, str] = {
    CANNOT_WIN: "stopped early: at the deciding load level it cannot beat the best so far",
    HARD_SLO: "stopped early: it breaks a hard SLO at the deciding load level",
}


def deciding_level(levels: list[float], objective_level: float | None) -> float:
    """The load level the objective reads: `objective_level`, else the highest."""
    if objective_level is not None and float(objective_level) in [float(v) for v in levels]:
        return float(objective_level)
    return max(float(v) for v in levels)


def probe_order(levels: list[float], objective_level: float | None) -> list[float]:
    """The load levels with the deciding one first, the others in their written order."""
    first = deciding_level(levels, objective_level)
    return [first] + [float(v) for v in levels if float(v) != first]


def probe_verdict(score: Score, incumbent: float | None, objective: str) -> str | None:
    """Why the candidate's other levels are not worth running (a STOP_REASONS key), or None.
    `score` is its score at the deciding level(s); `incumbent` the task's best objective so far
    (None: nothing to beat yet, so every candidate that keeps the hard SLOs goes on)."""
    if score.objective is None:
        return None  # no usable figure: the experiment fails or finishes as it would have
    if not score.slo_ok:
        return HARD_SLO
    if incumbent is not None and not is_better(score.objective, incumbent, objective):
        return CANNOT_WIN
    return None


NO_IMPROVEMENT = "no_improvement"
GPU_BUDGET = "gpu_budget"
TASK_STOP_REASONS: dict[str, str] = {
    NO_IMPROVEMENT: "stopped: no improvement beyond noise in the last {patience} experiments",
    GPU_BUDGET: "stopped: the task's GPU-hour budget ({budget:g} GPU-h) is spent",
}


def improvements(objectives: list[float | None], objective: str, noise: float) -> list[int]:
    """Positions (in finishing order) of the experiments that beat the best before them by more
    than `noise` (a relative margin: measurements repeat only to within it)."""
    best: float | None = None
    out = []
    for i, value in enumerate(objectives):
        if value is None:
            continue
        if best is None:
            best = value
            out.append(i)
            continue
        margin = abs(best) * noise
        target = best - margin if not is_better(1.0, 0.0, objective) else best + margin
        if is_better(value, target, objective):
            out.append(i)
        if is_better(value, best, objective):
            best = value
    return out


def task_stop(objectives: list[float | None], objective: str, patience: int | None, noise: float,
              gpu_hours: float = 0.0, gpu_hour_budget: float | None = None) -> str | None:
    """Why the task should create no more experiments (a TASK_STOP_REASONS key), or None.
    `objectives` are the finished experiments' eligible objectives (None: failed, or broke a
    hard SLO) in finishing order."""
    if gpu_hour_budget is not None and gpu_hours >= gpu_hour_budget:
        return GPU_BUDGET
    if patience is not None:
        found = improvements(objectives, objective, noise)
        if found and len(objectives) - 1 - found[-1] >= patience:
            return NO_IMPROVEMENT
    return None


def task_stop_label(reason: str | None, patience: int | None, budget: float | None) -> str | None:
    """How a person reads a task's stop reason."""
    if reason not in TASK_STOP_REASONS:
        return None
    return TASK_STOP_REASONS[reason].format(patience=patience, budget=budget or 0.0)
