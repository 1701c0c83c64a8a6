"""How long an experiment will hold its GPUs, predicted from its parameters.

The scheduler's reservation (EASY backfill, app.domain.placement) needs expected ends. A
task's moving-average length is the same for all its experiments, but their lengths are not:
start-up grows with the CUDA-graph capture sizes, the weights loaded per GPU shrink with the
tensor-parallel size, and so on. Within one task everything else (model, scenarios, request
budget) is fixed, so the task's own finished experiments predict the next ones well:

- an experiment with parameters already measured: the mean of those lengths;
- else, with enough samples (more than numeric parameters + 1): a least-squares fit, with a
  small ridge, of length on the numeric parameters (booleans as 0/1), kept within half the
  shortest and twice the longest length seen, so a wild extrapolation cannot claim a group
  for ever nor promise a start that will not come;
- else nothing: the task's moving average of its succeeded experiments' lengths
  (`learned`), else the task's time limit (`expected_length`).

This module is the one place that decides an expected length: the coordinator asks
`expected_length` for a new experiment's fair-share tag and the planner's clock, the store
folds each succeeded length into the task's average with `learned`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

LENGTH_WEIGHT = 0.3  # of the newest length in a task's moving average
RIDGE = 1e-3  # on standardised features: keeps collinear parameters (tp and dp swept together) solvable


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@dataclass
class LengthModel:
    """Fitted on one task's succeeded experiments: (parameters, seconds each held its GPUs)."""

    exact: dict[str, float] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    means: np.ndarray | None = None
    scales: np.ndarray | None = None
    coefficients: np.ndarray | None = None
    bounds: tuple[float, float] = (0.0, math.inf)

    @classmethod
    def fit(cls, samples: list[tuple[Mapping[str, Any], float]]) -> "LengthModel":
        samples = [(p, s) for p, s in samples if s > 0 and math.isfinite(s)]
        model = cls()
        if not samples:
            return model
        groups: dict[str, list[float]] = {}
        for params, seconds in samples:
            groups.setdefault(_key(params), []).append(seconds)
        model.exact = {k: sum(v) / len(v) for k, v in groups.items()}
        lengths = [s for _, s in samples]
        model.bounds = (min(lengths) / 2, max(lengths) * 2)
        names = sorted({k for p, _ in samples for k, v in p.items() if _numeric(v) is not None})
        if not names or len(samples) < len(names) + 2:
            return model
        rows = np.array([[_numeric(p.get(k)) if _numeric(p.get(k)) is not None else np.nan for k in names]
                         for p, _ in samples], dtype=float).reshape(len(samples), len(names))
        means = np.nanmean(rows, axis=0) if names else np.zeros(0)
        rows = np.where(np.isnan(rows), means, rows)  # a parameter a config leaves out: its usual value
        scales = rows.std(axis=0)
        scales[scales == 0] = 1.0
        x = np.hstack([np.ones((len(samples), 1)), (rows - means) / scales])
        y = np.array(lengths)
        penalty = RIDGE * len(samples) * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        model.names, model.means, model.scales = names, means, scales
        model.coefficients = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        # With centred features and an unshrunk intercept, the intercept is the samples' mean;
        # taken as that mean summed directly, a fit whose parameters the samples never varied
        # answers exactly what `exact` answers for those parameters (solved, it differed in the
        # last bit, and the longest-first order ranked an 8-GPU experiment by that bit).
        model.coefficients[0] = sum(lengths) / len(lengths)
        return model

    def predict(self, params: Mapping[str, Any]) -> float | None:
        """Expected seconds for `params`, or None when the samples cannot tell."""
        seen = self.exact.get(_key(params))
        if seen is not None:
            return seen
        if self.coefficients is None:
            return None
        values = np.array([_numeric(params.get(k)) if _numeric(params.get(k)) is not None else self.means[i]
                           for i, k in enumerate(self.names)], dtype=float)
        guess = float(self.coefficients[0] + self.coefficients[1:] @ ((values - self.means) / self.scales))
        low, high = self.bounds
        return min(max(guess, low), high)


def learned(average: float | None, seconds: float) -> float:
    """A task's moving-average experiment length once a succeeded one of `seconds` is folded in."""
    return seconds if average is None else (1 - LENGTH_WEIGHT) * average + LENGTH_WEIGHT * seconds


def expected_length(own: float | None, task_average: float | None, time_limit: float) -> float:
    """How long an experiment is expected to hold its GPUs: its own prediction
    (`LengthModel.predict`), else its task's moving average, else its task's time limit."""
    if own is not None:
        return own
    return task_average if task_average is not None else time_limit
