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
from typing import Any, Sequence

from app.domain.states import ExperimentState

@dataclass(frozen=True)
class Objective:
    """One thing a task can optimise: the level-summary figure it reads, which way is
    better, and how to show it (the summary is in ms; objectives are reported in `unit`).

    `needs` names what the task must give for the figure to exist: "slo" (goodput counts
    requests meeting every SLO), "price" (`optimization.gpu_price_per_hour`) or "rate_search"
    (`benchmark.rate_search`, the bounds of the search for the highest sustainable rate)."""

    name: str
    metric: str
    direction: str  # "minimize" | "maximize"
    factor: float  # summary figure -> reported unit
    unit: str
    label: str
    needs: str | None = None

    def as_dict(self) -> dict[str, str]:
        """How the API, the pages and the CLI name it."""
        return {"name": self.name, "unit": self.unit, "label": self.label, "direction": self.direction}

    def show(self, value: float | None) -> str:
        """The figure with its unit, as every view prints it ("4.94 s", "118 tok/s/GPU")."""
        return "–" if value is None else f"{value:.4g} {self.unit}"


def _percentiles() -> list[Objective]:
    """p50/p90/p99 of TTFT and E2E latency (seconds) and of TPOT and ITL (milliseconds: a
    token takes tens of ms), read from the benchmark client's summary (p50 is its median)."""
    out = []
    for metric, what, factor, unit in (("ttft", "TTFT", 1e-3, "s"), ("tpot", "TPOT", 1.0, "ms"),
                                       ("itl", "ITL", 1.0, "ms"), ("e2el", "E2E latency", 1e-3, "s")):
        for q in (50, 90, 99):
            key = f"median_{metric}_ms" if q == 50 else f"p{q}_{metric}_ms"
            out.append(Objective(f"minimize_p{q}_{metric}", key, "minimize", factor, unit, f"minimize p{q} {what}"))
    return out


# The first four are the original file format's objectives, with their original meaning.
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("minimize_latency", "mean_e2el_ms", "minimize", 1e-3, "s", "minimize latency (mean E2E)"),
    Objective("maximize_throughput", "output_throughput_per_gpu", "maximize", 1.0, "tok/s/GPU",
              "maximize throughput per GPU"),
    Objective("minimize_ttft", "mean_ttft_ms", "minimize", 1e-3, "s", "minimize TTFT"),
    Objective("minimize_tpot", "mean_tpot_ms", "minimize", 1e-3, "s", "minimize TPOT"),
    Objective("maximize_goodput", "goodput", "maximize", 1.0, "req/s", "maximize goodput (requests meeting every SLO)",
              needs="slo"),
    Objective("maximize_sustainable_rate", "request_rate", "maximize", 1.0, "req/s",
              "maximize the highest request rate that meets every SLO", needs="rate_search"),
    Objective("minimize_cost", "output_throughput_per_gpu", "minimize", 1.0, "$/M output tokens",
              "minimize cost per million output tokens", needs="price"),
    *_percentiles(),
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
    """An experiment's verdict. `objective` ranks (the measured figure with the SLO penalty
    applied); `measured` is the figure itself, in the objective's unit, which is what pages
    and charts show. `bracket` (highest sustainable rate only): the highest rate tried that
    met every SLO and the lowest that did not, per scenario."""

    objective: float | None
    slo_ok: bool = True
    penalty: float = 0.0
    violations: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # why there is no objective, in words
    measured: float | None = None
    bracket: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"objective": self.objective, "measured": self.measured, "slo_ok": self.slo_ok, "penalty": self.penalty,
               "violations": self.violations}
        if self.bracket is not None:
            out["bracket"] = self.bracket
        return out


def direction(objective: str) -> str:
    return OBJECTIVES[objective].direction


def penalised(value: float, penalty: float, objective: str) -> float:
    """The figure that ranks: `value` made worse by the SLO penalty in the objective's direction."""
    return value * (1 + penalty) if direction(objective) == "minimize" else value / (1 + penalty)


def figure(measured: dict[str, float] | None, score: float | None, objective: str) -> float | None:
    """An experiment's figure for `objective` in its unit: what it measured, or (stored before
    measured figures were kept) its score, which is the figure when no SLO was broken."""
    if measured and objective in measured:
        return measured[objective]
    return score if not measured else None


def trial_values(measured: dict[str, float] | None, penalty: float | None,
                 names: Sequence[str]) -> tuple[float, ...] | None:
    """A multi-objective task's figures as its sampler weighs them: each objective's measured
    figure with the SLO penalty applied in its direction; None for one objective, or when a
    figure is missing."""
    if len(names) < 2 or not measured or any(name not in measured for name in names):
        return None
    return tuple(penalised(measured[name], penalty or 0.0, name) for name in names)


def _slo_items(slo: dict[str, Any] | None):
    if not slo:
        return
    for pct, rule in (slo.get("latency") or {}).items():
        if rule and ("latency", pct) in SLO_METRICS:
            yield f"latency.{pct}", SLO_METRICS[("latency", pct)], rule
    for name in ("ttft", "tpot"):
        if slo.get(name):
            yield name, SLO_METRICS[(name, None)], slo[name]


def measure_level(level: dict[str, Any], objective: str, price: float | None = None) -> float | None:
    """One level's figure for `objective` in its unit, without any penalty; None when the
    level does not have it. Cost per million output tokens: what the GPUs cost per hour
    (`price`, per GPU) over the output tokens they produce in that hour, per million."""
    o = OBJECTIVES[objective]
    raw = level.get(o.metric)
    if raw is None:
        return None
    if o.needs == "price":
        return price / 3600.0 / float(raw) * 1e6 if price and float(raw) > 0 else None
    return float(raw) * o.factor


def _untrusted(level: dict[str, Any]) -> str | None:
    completed, errors = int(level.get("completed") or 0), int(level.get("errors") or 0)
    if not completed:
        return "no request completed at the scored load level"
    if errors > MAX_ERROR_RATE * (completed + errors):
        return (f"{errors} of {completed + errors} requests failed at the scored load level (more than "
                f"{MAX_ERROR_RATE:.0%}): the measurement is not trusted")
    return None


def slo_verdict(level: dict[str, Any], slo: dict[str, Any] | None) -> Score:
    """The SLO side of a level alone: violations, penalty and whether a hard SLO broke."""
    steepness = float((slo or {}).get("steepness") or 0.1)
    result = Score(objective=None)
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
    return result


def score_level(level: dict[str, Any], objective: str, slo: dict[str, Any] | None = None,
                price: float | None = None) -> Score:
    """Score one load level's summary; None when the level produced no usable figure."""
    problem = _untrusted(level)
    base = measure_level(level, objective, price)
    if problem is None and base is None:
        problem = f"the scored load level has no {OBJECTIVES[objective].metric}"
    if problem:
        return Score(objective=None, slo_ok=False, problem=problem)
    result = slo_verdict(level, slo)
    result.measured = base
    result.objective = penalised(base, result.penalty, objective)
    return result


def sustains(level: dict[str, Any], slo: dict[str, Any] | None) -> bool:
    """A rate is sustained when the level's measurement is trusted and it broke no SLO at all."""
    return _untrusted(level) is None and not slo_verdict(level, slo).violations


def sustainable_rate(levels: list[dict[str, Any]], slo: dict[str, Any] | None) -> dict[str, Any]:
    """The highest request rate tried that met every SLO, and the lowest tried above it that
    did not (None when every rate tried met them: the search's upper bound was sustained)."""
    rated = sorted((float(lv["request_rate"]), lv) for lv in levels if lv.get("request_rate"))
    passed = [rate for rate, lv in rated if sustains(lv, slo)]
    best = max(passed) if passed else 0.0
    failed = [rate for rate, lv in rated if rate > best and not sustains(lv, slo)]
    return {"rate": best, "passed": max(passed) if passed else None, "failed": min(failed) if failed else None}


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
    scenarios: list[list[dict[str, Any]]], objective: str, slo: dict[str, Any] | None = None, at: float | None = None,
    price: float | None = None,
) -> Score:
    """Score a whole experiment: every scenario at the scored level, then the mean. The
    highest sustainable rate reads every level of a scenario instead (the rates its search
    tried); it is an SLO-respecting figure by construction, so it carries no penalty."""
    if OBJECTIVES[objective].needs == "rate_search":
        found = [sustainable_rate(levels, slo) for levels in scenarios if levels]
        if not found:
            return Score(objective=None, slo_ok=False, problem="no scenario produced a measurement")
        value = sum(f["rate"] for f in found) / len(found)
        return Score(objective=value, measured=value, bracket=found)
    parts = [score_level(scored_level(levels, at), objective, slo, price) for levels in scenarios if levels]
    if not parts or any(p.objective is None for p in parts):
        problem = next((p.problem for p in parts if p.problem), "no scenario produced a measurement")
        return Score(objective=None, slo_ok=False, violations=[v for p in parts for v in p.violations],
                     problem=problem)
    return Score(
        objective=sum(p.objective for p in parts) / len(parts),
        measured=sum(p.measured for p in parts) / len(parts),
        slo_ok=all(p.slo_ok for p in parts),
        penalty=sum(p.penalty for p in parts) / len(parts),
        violations=[v for p in parts for v in p.violations],
    )


def measure_all(scenarios: list[list[dict[str, Any]]], names: list[str], slo: dict[str, Any] | None = None,
                at: float | None = None, price: float | None = None) -> tuple[Score, dict[str, float]]:
    """The first objective's score (what ranks a single-objective task) and every named
    objective's measured figure, in its unit ({} when the first has none)."""
    scores = {name: score(scenarios, name, slo, at, price) for name in names}
    first = scores[names[0]]
    if first.objective is None:
        return first, {}
    return first, {name: s.measured for name, s in scores.items() if s.measured is not None}


def is_better(a: float, b: float, objective: str) -> bool:
    return a < b if direction(objective) == "minimize" else a > b
