"""Bayesian optimisation with Optuna's TPE sampler, rebuilt from the history on every call.

No Optuna storage outlives a call: an in-memory study is filled from the history
(succeeded -> COMPLETE with its objective, failed/timed out -> FAIL, pending/queued/running
-> RUNNING) and asked `n` times. A failure that shows the parameter set cannot run (out of
memory, KV cache too small, ...) is a COMPLETE trial with a violated constraint instead:
TPE ignores FAIL trials, but ranks infeasible ones below every feasible one, so it steers
away from that region instead of trying its neighbours. `constant_liar=True` makes TPE treat RUNNING trials as
bad results, so parallel suggestions spread out instead of piling onto one spot; the
trials asked during this call are RUNNING too, so the n suggestions spread among
themselves. The sampler seed mixes `optimization.seed` with the history length, which
keeps calls replayable (same history -> same suggestions) without repeating the previous
call's random start-up points.

TPE can propose a point that is already taken, which in a finite space is likely near the
end. Each slot is retried a bounded number of times, then filled with the best-spread
unused grid point (the grid strategy's order), so the space is still exhausted cleanly.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from app.domain.states import ExperimentState
from app.domain.strategies.base import Strategy, Trial, canonical, seen_keys, total_size
from app.domain.strategies.grid import unused_points
from app.domain.taskspec import Choice, Domain, FloatRange, IntRange

RETRIES_PER_SLOT = 20


def distributions(space: dict[str, Domain]) -> dict[str, Any]:
    """Search space -> Optuna distributions (same names, same order)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, dom in space.items():
        if isinstance(dom, Choice):
            out[name] = CategoricalDistribution(list(dom.values))
        elif isinstance(dom, IntRange):
            # high aligned to the step: Optuna warns (every call) when it is not
            out[name] = IntDistribution(dom.low, dom.value_at(dom.size() - 1), log=dom.log, step=dom.step)
        else:
            assert isinstance(dom, FloatRange)
            out[name] = FloatDistribution(dom.low, dom.high, log=dom.log)
    return out


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every in-memory study it creates; one per call would flood the logs."""
    import optuna

    level = optuna.logging.get_verbosity()  # also makes optuna set up its logger first
    optuna.logging.set_verbosity(max(level, logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _frozen(trial: Trial, dists: dict[str, Any]) -> Any | None:
    """History entry -> Optuna FrozenTrial, or None when it says nothing to TPE (cancelled,
    or params outside the current search space)."""
    from optuna.trial import TrialState, create_trial

    if any(v is not None for k, v in trial.params.items() if k not in dists):
        return None
    params = {name: trial.params.get(name) for name in dists}
    if trial.state.is_active():
        kwargs: dict[str, Any] = {"state": TrialState.RUNNING}
    elif trial.state == ExperimentState.SUCCEEDED and trial.objective is not None and not math.isnan(trial.objective):
        kwargs = {"state": TrialState.COMPLETE, "value": float(trial.objective)}
    elif trial.infeasible:
        kwargs = {"state": TrialState.COMPLETE, "value": 0.0, "constraints": {"runs": 1.0}}
    elif trial.state.is_failure() or trial.state == ExperimentState.SUCCEEDED:
        kwargs = {"state": TrialState.FAIL}
    else:
        return None
    try:
        return create_trial(params=params, distributions=dists, **kwargs)
    except (ValueError, TypeError):  # a value outside the current distributions: the spec changed
        return None


class BayesianStrategy(Strategy):
    name = "bayesian"
    label = "Bayesian (Optuna TPE)"

    def suggest(self, history: Sequence[Trial], n: int) -> list[dict[str, Any]]:
        space = self.spec.search_space
        if n <= 0:
            return []
        seen = seen_keys(history)
        if not space:
            return [] if canonical({}) in seen else [{}]
        with _quiet_optuna():
            return self._suggest(space, history, seen, n)

    def _suggest(self, space: dict[str, Domain], history: Sequence[Trial], seen: set[str], n: int) -> list[dict[str, Any]]:
        import optuna

        dists = distributions(space)
        seed = (self.spec.optimization.seed * 1_000_003 + len(history)) % (2**31 - 1)
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        study = optuna.create_study(direction=self.spec.objective_direction, sampler=sampler)
        for trial in history:
            frozen = _frozen(trial, dists)
            if frozen is not None:
                study.add_trial(frozen)
        finite = total_size(space) is not None
        out: list[dict[str, Any]] = []
        for _ in range(n):
            point = self._ask_new(study, dists, seen)
            if point is None and finite:
                point = next(unused_points(space, seen), None)
                if point is not None:  # let the liar know about it too
                    study.add_trial(optuna.trial.create_trial(
                        state=optuna.trial.TrialState.RUNNING, params=point, distributions=dists))
            if point is None:
                break
            seen.add(canonical(point))
            out.append(point)
        return out

    @staticmethod
    def _ask_new(study: Any, dists: dict[str, Any], seen: set[str]) -> dict[str, Any] | None:
        """Ask TPE until it proposes an unseen point; duplicates stay RUNNING (a harmless lie)."""
        for _ in range(RETRIES_PER_SLOT):
            trial = study.ask(dists)
            point = {name: trial.params[name] for name in dists}
            if canonical(point) not in seen:
                return point
        return None
