"""Turning benchmark figures into one number to optimise, with SLO penalties.

Which figures: each traffic scenario is scored at one load level: `optimization.objective_level`
(a value of `num_concurrency`, or of `request_rate` for open-loop tasks) or, by default, the
highest level (the point an operator sizes for). The task's objective is the mean of the
per-scenario scores. Percentiles are never averaged across levels.

SLOs use the original inference-autotuner's rule (thresholds in seconds): a metric over its
threshold by `ratio = (actual - threshold) / threshold` adds `weight * exp(ratio / steepness)`
to a penalty; the score becomes `base * (1 + penalty)` when minimising and
`base / (1 + penalty)` when maximising. A `hard_fail` SLO violated by at least `fail_ratio`
makes the configuration ineligible (`slo_ok = False`): it can never be the best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from app.domain.states import ExperimentState

@dataclass(frozen=True)
class Objective:
    """One thing a task can optimise: the level-summary figure it reads, which way is
    better, and how to show it (the summary is in ms; objectives are reported in `unit`)."""

    name: str
    metric: str
    direction: str  # "minimize" | "maximize"
    factor: float  # summary figure -> reported unit
    unit: str
    label: str


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("minimize_latency", "mean_e2el_ms", "minimize", 1e-3, "s", "minimize latency (mean E2E)"),
    Objective("maximize_throughput", "output_throughput_per_gpu", "maximize", 1.0, "tok/s/GPU",
              "maximize throughput per GPU"),
    Objective("minimize_ttft", "mean_ttft_ms", "minimize", 1e-3, "s", "minimize TTFT"),
    Objective("minimize_tpot", "mean_tpot_ms", "minimize", 1e-3, "s", "minimize TPOT"),
)}


def eligible(state: str, objective: float | None, slo_ok: bool | None) -> bool:
    """The one rule for "may be the best": succeeded, measured, and no hard SLO broken.
    The store's `Experiment.eligible` is this rule as SQL."""
    return state == ExperimentState.SUCCEEDED and objective is not None and slo_ok is not False


# SLO name -> metric key (milliseconds in the summary, seconds in the task file)
SLO_METRICS = {
    ("latency", "p50"): "median_e2el_ms",
    ("latency", "p90"): "p90_e2el_ms",
    ("latency", "p95"): "p95_e2el_ms",
    ("latency", "p99"): "p99_e2el_ms",
    ("ttft", None): "mean_ttft_ms",
    ("tpot", None): "mean_tpot_ms",
}


# A level where more than this share of requests failed measured a broken server (crashed,
# overloaded into errors, misconfigured), not a configuration: it gets no objective, whatever
# the objective is (a throughput of the few requests that got through would look good).
MAX_ERROR_RATE = 0.05


@dataclass
class Score:
    objective: float | None
    slo_ok: bool = True
    penalty: float = 0.0
    violations: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # why there is no objective, in words

    def as_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "slo_ok": self.slo_ok, "penalty": self.penalty, "violations": self.violations}


def direction(objective: str) -> str:
    return OBJECTIVES[objective].direction


def _slo_items(slo: dict[str, Any] | None):
    if not slo:
        return
    for pct, rule in (slo.get("latency") or {}).items():
        if rule and ("latency", pct) in SLO_METRICS:
            yield f"latency.{pct}", SLO_METRICS[("latency", pct)], rule
    for name in ("ttft", "tpot"):
        if slo.get(name):
            yield name, SLO_METRICS[(name, None)], slo[name]


def score_level(level: dict[str, Any], objective: str, slo: dict[str, Any] | None = None) -> Score:
    """Score one load level's summary; None when the level produced no usable figure."""
    o = OBJECTIVES[objective]
    key, sense, factor = o.metric, o.direction, o.factor
    raw = level.get(key)
    completed, errors = int(level.get("completed") or 0), int(level.get("errors") or 0)
    if raw is None or not completed:
        return Score(objective=None, slo_ok=False, problem="no request completed at the scored load level")
    if errors > MAX_ERROR_RATE * (completed + errors):
        return Score(objective=None, slo_ok=False, problem=(
            f"{errors} of {completed + errors} requests failed at the scored load level (more than "
            f"{MAX_ERROR_RATE:.0%}): the measurement is not trusted"))
    base = float(raw) * factor
    steepness = float((slo or {}).get("steepness") or 0.1)
    result = Score(objective=base)
    for name, metric, rule in _slo_items(slo):
        actual_ms = level.get(metric)
        if actual_ms is None:
            continue
        threshold = float(rule["threshold"])
        actual = float(actual_ms) / 1000.0
        if actual <= threshold:
            continue
        ratio = (actual - threshold) / threshold
        hard = bool(rule.get("hard_fail")) and ratio >= float(rule.get("fail_ratio") or 0.0)
        result.violations.append({"slo": name, "actual_s": actual, "threshold_s": threshold, "ratio": ratio, "hard_fail": hard})
        if hard:
            result.slo_ok = False
        else:
            result.penalty += float(rule.get("weight", 1.0)) * math.exp(min(ratio / steepness, 50.0))
    result.objective = base * (1 + result.penalty) if sense == "minimize" else base / (1 + result.penalty)
    return result


def level_value(level: dict[str, Any]) -> float | None:
    """The load a level ran at: its request rate (open loop) or its concurrency."""
    value = level.get("request_rate") or level.get("concurrency")
    return float(value) if value is not None else None


def scored_level(levels: list[dict[str, Any]], at: float | None = None) -> dict[str, Any]:
    """The level the objective reads: the one run at `at`, else the highest."""
    if at is not None:
        for level in levels:
            if level_value(level) == float(at):
                return level
    return max(levels, key=lambda lv: level_value(lv) or 0.0)


def score(
    scenarios: list[list[dict[str, Any]]], objective: str, slo: dict[str, Any] | None = None, at: float | None = None
) -> Score:
    """Score a whole experiment: every scenario at the scored level, then the mean."""
    parts = [score_level(scored_level(levels, at), objective, slo) for levels in scenarios if levels]
    if not parts or any(p.objective is None for p in parts):
        problem = next((p.problem for p in parts if p.problem), "no scenario produced a measurement")
        return Score(objective=None, slo_ok=False, violations=[v for p in parts for v in p.violations],
                     problem=problem)
    return Score(
        objective=sum(p.objective for p in parts) / len(parts),
        slo_ok=all(p.slo_ok for p in parts),
        penalty=sum(p.penalty for p in parts) / len(parts),
        violations=[v for p in parts for v in p.violations],
    )


def is_better(a: float, b: float, objective: str) -> bool:
    return a < b if direction(objective) == "minimize" else a > b
