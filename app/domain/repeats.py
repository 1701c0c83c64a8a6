"""A winner that is not noise: the top configurations measured again, and what to rely on.

Why: one measurement of a configuration carries the run's noise (request order, arrival
times, the host), so the best of a search is partly the luckiest. SCOOT re-runs its best
configurations with different request orders and reports the worst case; this does the same
for the task's top `repeat_top` configurations, `repeats` more times each, with a different
seed each time (the benchmark client's request order and arrival times).

What a configuration's measurements give (`summarise`): their mean and spread (population
standard deviation, and the range), and the figure to rely on: the worst measurement for an
objective to minimise (a latency), the mean for one to maximise (a throughput), with the worst
SLO verdict of any run (its largest penalty; ineligible if any run broke a hard SLO). The
winner is the configuration whose relied figure, penalised like a single run's, ranks first.
It is a **tie** when the runner-up's range of scores reaches into the winner's (the
runner-up's best run beat the winner's worst): the two are within the noise, and both launch
commands are the answer; so is any other configuration whose best run did (`tied`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from app.domain.objectives import direction, penalised


@dataclass
class Run:
    """One measurement of a configuration: its figure, SLO penalty and hard-SLO verdict."""

    experiment_id: int
    seq: int
    measured: float
    penalty: float = 0.0
    slo_ok: bool = True

    def score(self, objective: str) -> float:
        return penalised(self.measured, self.penalty, objective)


@dataclass
class Summary:
    key: str
    params: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    mean: float = 0.0
    std: float = 0.0
    low: float = 0.0
    high: float = 0.0
    relied: float = 0.0
    relied_score: float = 0.0
    slo_ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "runs": [{"id": r.experiment_id, "seq": r.seq, "measured": r.measured,
                                                  "penalty": r.penalty, "slo_ok": r.slo_ok} for r in self.runs],
                "mean": self.mean, "std": self.std, "low": self.low, "high": self.high, "relied": self.relied,
                "relied_score": self.relied_score, "slo_ok": self.slo_ok}


def summarise(key: str, params: dict[str, Any], runs: list[Run], objective: str) -> Summary:
    figures = [r.measured for r in runs]
    relied = max(figures) if direction(objective) == "minimize" else statistics.fmean(figures)
    penalty = max(r.penalty for r in runs)
    return Summary(key, params, runs, statistics.fmean(figures), statistics.pstdev(figures), min(figures),
                   max(figures), relied, penalised(relied, penalty, objective), all(r.slo_ok for r in runs))


def _sort_key(s: Summary, objective: str) -> float:
    return s.relied_score if direction(objective) == "minimize" else -s.relied_score


def within_noise(best: Summary, other: Summary, objective: str) -> bool:
    """The other's best run scored at least as well as the best's worst run."""
    sign = 1.0 if direction(objective) == "minimize" else -1.0  # lower is better after the sign
    best_worst = max(sign * r.score(objective) for r in best.runs)
    other_best = min(sign * r.score(objective) for r in other.runs)
    return other_best <= best_worst


def verdict(summaries: list[Summary], objective: str) -> dict[str, Any]:
    """The ranking of the re-measured configurations, the winner, whether it is a tie and with
    which configurations (`tied`: the runner-up first, and any other within the noise)."""
    ranked = sorted((s for s in summaries if s.slo_ok), key=lambda s: _sort_key(s, objective))
    out: dict[str, Any] = {"ranked": ranked, "ineligible": [s for s in summaries if not s.slo_ok],
                           "winner": ranked[0] if ranked else None, "runner_up": ranked[1] if len(ranked) > 1 else None}
    out["tied"] = [s for s in ranked[1:] if within_noise(ranked[0], s, objective)]
    out["tie"] = bool(out["tied"])
    return out
